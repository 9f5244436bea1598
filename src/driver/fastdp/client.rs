//! Ferry's FastDP 1.2.0 clients: [`push`] (upload one file over up to N connections that
//! share one [`SendPlan`]) and [`pull`] (download one catalog file over up to N connections
//! into a shared `.part`), both resumable and retried with backoff (fastdp.md 2.7-2.10, 3).
//!
//! ```text
//!  push: hash (one pread pass: SHA-256 and every chunk's CRC-32C; or the resume record's /
//!        the folder index's SHA-256) ─► resume record
//!        ─► N connection threads: handshake, header, Have merged into the plan
//!             └─ loop: chunk from the plan (plain: CRC from the hash pass or a pread pass,
//!                bytes by sendfile(2); zstd: pread, CRC-32C, compress) ─► Acks applied to the
//!                plan (a wrong CRC re-queues the chunk, every idle connection is woken)
//!        ─► plan complete: final FIN on every connection ─► Complete ─► record deleted
//!  pull: first connection learns the parameters (record written, `.part` attached)
//!        ─► N-1 more join with the Have of the `.part` ─► chunks into the `.part`
//!        ─► FIN: Ack, verify once, commit into DIR ─► Complete
//!  any connection: Recycle ─► reconnect at once; failure ─► backoff 1 s..60 s (F31) and
//!  reconnect with the same header (resume from Have); a final code ─► stop, record deleted
//! ```
//!
//! Which failures are final: the server's final codes (2.11), a refused handshake (a status
//! other than 503 or 408, or a 101 that is not FastDP 1.2.0), a local error (file unreadable
//! or changed while sent). Retried: the rest (network errors, EOF, timeouts, `busy`,
//! `no-space`, `too-many-connections` on the first connection, a reply that is not a JMSG),
//! until `max_retries` attempts in a row made no progress.
//!
//! Resume records: a push keeps `{TransferId, Checksum, file stamp}` in
//! `$XDG_CACHE_HOME/ferry/fastdp/` (or `~/.cache/ferry/fastdp/`, else `.ferry/fastdp/` beside
//! the file), named after the file's path, the server and the compression, so a rerun of the
//! same command after a kill reuses the TransferId and hashes nothing; a pull keeps its record
//! beside its `.part` in `DIR/.ferry/fastdp/`.
//!
//! Out of scope: printing (the CLI draws progress from [`Progress`]), the server.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::net::ToSocketAddrs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::link::{Got, Link, Wake, Wakers};
use super::receive::{commit_once, ChunkSink, LocalError, MemoryCrcs, WriteGate};
use crate::catalog::FileStamp;
use crate::dir::Dir;
use crate::ingest::{
    Attachment, Expect, IngestDir, IngestError, Publisher, TransferError, TransferRegistry,
    TransferSpec,
};
use crate::proto::fastdp::client::{ClientConfig, PullClient, PushClient};
use crate::proto::fastdp::connection::Event;
use crate::proto::fastdp::crc::{crc32c, Crc32c};
use crate::proto::fastdp::frame::Compress;
use crate::proto::fastdp::http::{key_from_random, ResponseError, DEFAULT_PATH};
use crate::proto::fastdp::messages::{
    is_valid_file_name, one_chunk_for, Checksum, ErrorCode, ErrorMsg, Have, Header, PullReply,
    PullRequest, PullTarget, TransferId, MAX_HAVE_RANGES,
};
use crate::proto::fastdp::plan::{AckOutcome, SendPlan};
use crate::proto::fastdp::schedule::{Backoff, Limits};
use crate::proto::fastdp::zstd_chunk::ChunkCompressor;
use crate::transport::{connect_tcp, Stream};
use crate::wire::hex;

/// zstd level of pushed chunks (zstd's default, as cli.py uses).
pub const ZSTD_LEVEL: i32 = 3;

/// How a client connects and retries.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Server `host:port`.
    pub addr: String,
    /// Connections per file (capped by the server's `MaxConnections` and the chunk count).
    pub parallel: usize,
    /// Push: chunk compression. Pull: whether zstd chunks are accepted.
    pub compress: Compress,
    /// Connect timeout and write timeout.
    pub io_timeout: Duration,
    /// Attempts in a row without progress before giving up (F31's backoff between them).
    pub max_retries: u32,
    /// Where push resume records go (default: the user's cache folder, see the module doc).
    pub resume_dir: Option<PathBuf>,
    /// Push: `ReconnectBytes` of the header (recycle each connection after this many payload
    /// bytes; `None`: the default 500 MB, 0: never).
    pub reconnect_bytes: Option<u64>,
    /// Connection deadlines.
    pub limits: Limits,
    pub verbose: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            addr: "127.0.0.1:5423".into(),
            parallel: 4,
            compress: Compress::None,
            io_timeout: Duration::from_secs(30),
            max_retries: 8,
            resume_dir: None,
            reconnect_bytes: None,
            limits: Limits::default(),
            verbose: false,
        }
    }
}

/// Why a transfer failed.
#[derive(Debug)]
pub enum ClientError {
    /// A local problem: the file, the output folder, the arguments.
    Local(String),
    /// The network failed and retries ran out.
    Network(String),
    /// The server said no with a final code, or refused the handshake.
    Refused(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Local(m) => write!(f, "fastdp: {m}"),
            ClientError::Network(m) => write!(f, "fastdp: {m}"),
            ClientError::Refused(m) => write!(f, "fastdp: {m}"),
        }
    }
}

impl std::error::Error for ClientError {}

fn local(e: impl std::fmt::Display) -> ClientError {
    ClientError::Local(e.to_string())
}

/// Progress of one file: bytes acknowledged (push) or stored durably (pull) out of `total`.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

/// What a push did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PushReport {
    pub file: String,
    /// The name the server stored it under.
    pub stored_as: String,
    pub size: u64,
    pub sha256: String,
    pub transfer_id: String,
    /// Chunks the server already held when the transfer (re)started.
    pub chunks_held: u64,
    pub chunks: u64,
    /// Chunk payload bytes written to the network (compressed with zstd).
    pub wire_bytes: u64,
    pub connections: usize,
    pub retries: u64,
    pub seconds: f64,
    /// Seconds spent hashing before the header (0 when the SHA-256 was known).
    pub hash_seconds: f64,
}

/// What a pull did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PullReport {
    pub target: String,
    pub name: String,
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub transfer_id: String,
    pub chunks_held: u64,
    pub wire_bytes: u64,
    pub connections: usize,
    pub retries: u64,
    pub seconds: f64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Random bytes from the kernel.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    let mut got = 0;
    while got < N {
        // SAFETY: getrandom(2) writes at most N - got bytes into the live buffer.
        let n = unsafe { libc::getrandom(b[got..].as_mut_ptr().cast(), N - got, 0) };
        if n > 0 {
            got += n as usize;
        } else if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            // No entropy source at all: a time-based value still makes ids unique enough.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
                ^ u128::from(std::process::id());
            for (i, x) in b.iter_mut().enumerate() {
                *x = (t >> ((i % 16) * 8)) as u8;
            }
            break;
        }
    }
    b
}

/// How one connection ended.
enum End {
    /// `Complete` with this final name.
    Complete(String),
    /// Recycled (2.10): reconnect at once.
    Recycle,
}

/// Why one connection failed.
enum Fail {
    /// Stop the transfer (final code, refused handshake, local error).
    Final(ClientError),
    /// Reconnect after a backoff; `too_many`: the server has enough connections already.
    Retry { why: String, too_many: bool },
}

fn retry(why: impl Into<String>) -> Fail {
    Fail::Retry {
        why: why.into(),
        too_many: false,
    }
}

/// A peer's Error: final codes stop, others retry.
fn peer_error(e: ErrorMsg) -> Fail {
    if e.is_final() {
        Fail::Final(ClientError::Refused(format!("server: {e}")))
    } else {
        Fail::Retry {
            too_many: e.code == ErrorCode::TooManyConnections,
            why: format!("server: {e}"),
        }
    }
}

/// A local failure the machine reported: a refused handshake is final, the rest retried.
fn machine_failure(e: ErrorMsg, handshake: Option<&ResponseError>) -> Fail {
    match handshake {
        Some(ResponseError::Eof { .. }) | None => {
            if e.code == ErrorCode::ChecksumMismatch {
                Fail::Final(ClientError::Refused(e.to_string()))
            } else {
                retry(e.to_string())
            }
        }
        Some(ResponseError::Status { code, .. }) if *code == 503 || *code == 408 => {
            retry(e.to_string())
        }
        Some(h) => Fail::Final(ClientError::Refused(h.to_string())),
    }
}

/// Resolves the server address once before a transfer starts, so that a typo or a missing
/// port fails at once (exit 3) instead of after minutes of silent retries; once a transfer is
/// under way, a failed lookup on a reconnect is retried like any other network failure.
/// (`ferry fastdp get` calls it first too, before it creates its output folder.)
pub fn check_address(addr: &str) -> Result<(), ClientError> {
    let resolved = addr.to_socket_addrs().map(|mut a| a.next().is_some());
    // The form is only hinted at when the port is missing or not a number: a well-formed
    // address whose host does not resolve is a name problem, not a form problem.
    let has_port = addr
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let hint = if has_port { "" } else { " (want HOST:PORT)" };
    match resolved {
        Ok(true) => Ok(()),
        Ok(false) => Err(ClientError::Network(format!(
            "tcp: resolve {addr}: no addresses{hint}"
        ))),
        Err(e) => Err(ClientError::Network(format!(
            "tcp: resolve {addr}: {}{hint}",
            e.to_string().to_lowercase()
        ))),
    }
}

fn connect(opts: &ClientOptions) -> Result<(Link, ClientConfig), Fail> {
    let tcp = connect_tcp(&opts.addr, opts.io_timeout).map_err(|e| retry(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let cfg = ClientConfig {
        host: opts.addr.clone(),
        path: DEFAULT_PATH.to_owned(),
        key: key_from_random(random_bytes::<16>()),
        limits: opts.limits,
    };
    Ok((Link::new(Stream::Tcp(tcp)), cfg))
}

/// Shared by the connections of one transfer: stop flag, outcome, counters.
struct Run {
    stop: AtomicBool,
    outcome: Mutex<Option<Result<String, ClientError>>>,
    retries: AtomicU64,
    wire_bytes: AtomicU64,
    done_bytes: AtomicU64,
    wakers: Wakers,
    /// Wakes threads sleeping in a backoff when the transfer stops.
    sleep: (Mutex<()>, Condvar),
}

impl Run {
    fn new() -> Run {
        Run {
            stop: AtomicBool::new(false),
            outcome: Mutex::new(None),
            retries: AtomicU64::new(0),
            wire_bytes: AtomicU64::new(0),
            done_bytes: AtomicU64::new(0),
            wakers: Wakers::default(),
            sleep: (Mutex::new(()), Condvar::new()),
        }
    }

    fn finish(&self, r: Result<String, ClientError>) {
        let mut o = lock(&self.outcome);
        if o.is_none() || (o.as_ref().is_some_and(|x| x.is_err()) && r.is_ok()) {
            *o = Some(r);
        }
        drop(o);
        self.stop.store(true, Ordering::SeqCst);
        self.sleep.1.notify_all();
    }

    fn is_stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn sleep(&self, d: Duration) {
        let g = lock(&self.sleep.0);
        if !self.is_stopped() {
            let _ = self.sleep.1.wait_timeout(g, d);
        }
    }
}

/// Runs one connection slot until the transfer ends: connect, run, on failure back off and
/// reconnect. `first`: this slot never gives up on `too-many-connections`.
fn run_slot(
    run: &Run,
    opts: &ClientOptions,
    first: bool,
    mut attempt: impl FnMut() -> (Result<End, Fail>, bool),
) {
    let mut backoff = Backoff::new();
    let mut fruitless = 0u32;
    while !run.is_stopped() {
        let (r, progressed) = attempt();
        if progressed {
            backoff.reset();
            fruitless = 0;
        }
        match r {
            Ok(End::Complete(name)) => return run.finish(Ok(name)),
            Ok(End::Recycle) => continue,
            Err(Fail::Final(e)) => return run.finish(Err(e)),
            Err(Fail::Retry { why, too_many }) => {
                if run.is_stopped() {
                    return;
                }
                if too_many && !first {
                    // The server has enough connections for this transfer: this slot retires.
                    return;
                }
                fruitless += 1;
                if fruitless > opts.max_retries {
                    return run.finish(Err(ClientError::Network(format!(
                        "giving up after {} attempts without progress: {why}",
                        fruitless
                    ))));
                }
                run.retries.fetch_add(1, Ordering::Relaxed);
                let d = backoff.next_delay(u32::from_le_bytes(random_bytes::<4>()));
                // The first failure of a streak is always said (once per transfer, by the
                // first slot), so that a server that is down is not minutes of silence; the
                // rest with --verbose.
                if opts.verbose || (first && fruitless == 1) {
                    // On a clean line: a progress line may be on the terminal.
                    let clear = if std::io::stderr().is_terminal() {
                        "\r\x1b[K"
                    } else {
                        ""
                    };
                    eprintln!(
                        "{clear}fastdp: {why}; retrying in {:.1} s (at most {} {} without progress)",
                        d.as_secs_f64(),
                        opts.max_retries,
                        if opts.max_retries == 1 { "retry" } else { "retries" }
                    );
                }
                run.sleep(d);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Push
// ---------------------------------------------------------------------------------------------

/// A push's resume record.
#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
struct PushRecord {
    path: String,
    addr: String,
    compress: String,
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    transfer_id: String,
    checksum: String,
}

fn resume_dir(opts: &ClientOptions, file: &Path) -> PathBuf {
    if let Some(d) = &opts.resume_dir {
        return d.clone();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        });
    match cache {
        Some(c) => c.join("ferry").join("fastdp"),
        None => file
            .parent()
            .unwrap_or(Path::new("."))
            .join(".ferry")
            .join("fastdp"),
    }
}

fn record_path(opts: &ClientOptions, file: &Path, compress: Compress) -> PathBuf {
    let canon = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    let mut h = Sha256::new();
    h.update(canon.as_os_str().as_encoded_bytes());
    h.update([0]);
    h.update(opts.addr.as_bytes());
    h.update([0]);
    h.update(compress.as_str().as_bytes());
    let key = hex::encode(&h.finalize()[..16]);
    resume_dir(opts, file).join(format!("push-{key}.json"))
}

/// Largest resume record read.
const MAX_RECORD: u64 = 64 * 1024;

/// A push's resume record (in the user's cache folder, named on no command line but theirs).
/// Never through a link: read `O_NOFOLLOW | O_NONBLOCK` as a regular file.
fn read_record<T: serde::de::DeserializeOwned>(p: &Path) -> Option<T> {
    let dir = Dir::open(p.parent()?).ok()?;
    read_record_at(&dir, p.file_name()?)
}

/// The resume record `name` in `dir`, read `O_NOFOLLOW | O_NONBLOCK` as a regular file.
fn read_record_at<T: serde::de::DeserializeOwned>(dir: &Dir, name: &OsStr) -> Option<T> {
    use std::io::Read;
    let mut bytes = Vec::new();
    dir.open_read(name)
        .ok()?
        .take(MAX_RECORD + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    if bytes.len() as u64 > MAX_RECORD {
        return None;
    }
    serde_json::from_slice(&bytes).ok()
}

fn write_record<T: serde::Serialize>(p: &Path, rec: &T) -> io::Result<()> {
    let (Some(d), Some(name)) = (p.parent(), p.file_name()) else {
        return Err(io::Error::other("resume record without a folder"));
    };
    std::fs::create_dir_all(d)?;
    write_record_at(&Dir::open(d)?, name, rec)
}

/// Replaces the record `name` in `dir` through the folder's descriptor: the temporary is
/// created `O_EXCL | O_NOFOLLOW` (a planted link there is removed, never written through),
/// then renamed over the record.
fn write_record_at<T: serde::Serialize>(dir: &Dir, name: &OsStr, rec: &T) -> io::Result<()> {
    let mut tmp = name.to_owned();
    tmp.push(".new");
    let bytes = serde_json::to_vec(rec).map_err(io::Error::other)?;
    let _ = dir.remove_file(&tmp);
    let mut f = dir.create_new(&tmp, 0o600)?;
    let r = f
        .write_all(&bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| dir.rename(&tmp, dir, name));
    if r.is_err() {
        let _ = dir.remove_file(&tmp);
    }
    r
}

/// Bytes read per pread while hashing: small enough that SHA-256 reads them back from the
/// cache the copy just filled, and a divisor of every chunk size of 1.2's policy.
const HASH_PIECE: usize = 256 << 10;

/// SHA-256 of the open file and the CRC-32C of each `one_chunk`-byte chunk, in one pass of
/// pread in [`HASH_PIECE`]s: the send pass then needs no read of its own (the kernel sends the
/// chunks from the file's pages) and no second CRC.
fn hash_file(f: &File, size: u64, one_chunk: u32) -> io::Result<([u8; 32], Vec<u32>)> {
    let chunk = u64::from(one_chunk.max(1));
    let mut h = Sha256::new();
    let mut crcs = Vec::with_capacity(usize::try_from(size.div_ceil(chunk)).unwrap_or(0));
    let mut crc = Crc32c::new();
    let mut buf = vec![0u8; HASH_PIECE];
    let mut at = 0u64;
    while at < size {
        // Never past the end of the current chunk: each CRC covers exactly one chunk.
        let to_chunk_end = chunk - at % chunk;
        let n = ((size - at).min(to_chunk_end) as usize).min(buf.len());
        f.read_exact_at(&mut buf[..n], at)?;
        h.update(&buf[..n]);
        crc.update(&buf[..n]);
        at += n as u64;
        if at % chunk == 0 || at == size {
            crcs.push(crc.value());
            crc = Crc32c::new();
        }
    }
    Ok((h.finalize().into(), crcs))
}

/// Uploads `path` (fastdp.md 2); `progress` is called as chunks are acknowledged.
pub fn push(
    opts: &ClientOptions,
    path: &Path,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<PushReport, ClientError> {
    let started = Instant::now();
    check_address(&opts.addr)?;
    let (file, meta) = crate::dir::open_file_to_send(path)
        .map_err(|e| local(format!("{}: {e}", path.display())))?;
    let stamp = FileStamp::from_metadata(&meta);
    let size = meta.len();
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| is_valid_file_name(n))
        .ok_or_else(|| local(format!("{}: not a valid FastDP file name", path.display())))?
        .to_owned();
    let rec_path = record_path(opts, path, opts.compress);
    let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let old: Option<PushRecord> = read_record(&rec_path);
    let reuse = old.filter(|r| {
        r.dev == stamp.dev
            && r.ino == stamp.ino
            && r.size == size
            && r.mtime_ns == stamp.mtime_ns
            && r.ctime_ns == stamp.ctime_ns
            && r.addr == opts.addr
    });
    let mut hash_seconds = 0.0;
    // CRC-32C of every chunk, when the hash pass computed them (else each chunk is read and
    // summed as it is sent).
    let mut crcs: Option<Vec<u32>> = None;
    let (tid, checksum) = match reuse.as_ref().and_then(|r| {
        Some((
            TransferId::parse(&r.transfer_id)?,
            Checksum::parse(&r.checksum)?,
        ))
    }) {
        Some(x) => x,
        None => {
            let t = Instant::now();
            let sha = match crate::catalog::indexed_sha256(path) {
                Some(s) => s,
                None => {
                    let (s, c) = hash_file(&file, size, one_chunk_for(size)).map_err(local)?;
                    hash_seconds = t.elapsed().as_secs_f64();
                    crcs = Some(c);
                    s
                }
            };
            (TransferId::from_random(random_bytes::<16>()), Checksum(sha))
        }
    };
    let record = PushRecord {
        path: canon.to_string_lossy().into_owned(),
        addr: opts.addr.clone(),
        compress: opts.compress.as_str().into(),
        dev: stamp.dev,
        ino: stamp.ino,
        size,
        mtime_ns: stamp.mtime_ns,
        ctime_ns: stamp.ctime_ns,
        transfer_id: tid.to_string(),
        checksum: checksum.to_text(),
    };
    if let Err(e) = write_record(&rec_path, &record) {
        if opts.verbose {
            eprintln!("fastdp: resume record {}: {e}", rec_path.display());
        }
    }
    let mut header = Header::new(
        one_chunk_for(size),
        size,
        opts.compress,
        &name,
        tid,
        checksum,
    )
    .ok_or_else(|| local("file too large for FastDP"))?;
    header.reconnect_bytes = opts.reconnect_bytes;
    let g = header.geometry();
    let run = Run::new();
    let plan: Mutex<Option<SendPlan>> = Mutex::new(None);
    let held = AtomicU64::new(u64::MAX);
    let max_conns = AtomicU32::new(u32::MAX);
    let conns = opts
        .parallel
        .clamp(1, 64)
        .min(g.full_chunk().max(1) as usize);
    let shared = PushShared {
        opts,
        header: &header,
        file: &file,
        crcs: crcs.as_deref(),
        stamp,
        run: &run,
        plan: &plan,
        held: &held,
        max_conns: &max_conns,
        progress,
    };
    std::thread::scope(|s| {
        for i in 0..conns {
            let shared = &shared;
            s.spawn(move || {
                // Later connections wait for the first reply, so they do not race past the
                // server's MaxConnections.
                if i > 0 {
                    while !shared.run.is_stopped() && lock(shared.plan).is_none() {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    if i as u32 >= shared.max_conns.load(Ordering::SeqCst) {
                        return;
                    }
                }
                run_slot(shared.run, opts, i == 0, || push_connection(shared));
            });
        }
    });
    let outcome = lock(&run.outcome).take();
    match outcome {
        Some(Ok(stored_as)) => {
            let _ = std::fs::remove_file(&rec_path);
            Ok(PushReport {
                file: path.display().to_string(),
                stored_as,
                size,
                sha256: hex::encode(&checksum.0),
                transfer_id: tid.to_string(),
                chunks_held: held.load(Ordering::SeqCst).min(u64::from(g.full_chunk())),
                chunks: u64::from(g.full_chunk()),
                wire_bytes: run.wire_bytes.load(Ordering::SeqCst),
                connections: conns.min(max_conns.load(Ordering::SeqCst) as usize),
                retries: run.retries.load(Ordering::SeqCst),
                seconds: started.elapsed().as_secs_f64(),
                hash_seconds,
            })
        }
        Some(Err(e)) => {
            if matches!(e, ClientError::Refused(_) | ClientError::Local(_)) {
                // A final answer ends this TransferId: the next run starts over (F31).
                let _ = std::fs::remove_file(&rec_path);
            }
            Err(e)
        }
        None => Err(ClientError::Network(
            "transfer ended without an outcome".into(),
        )),
    }
}

struct PushShared<'a> {
    opts: &'a ClientOptions,
    header: &'a Header,
    file: &'a File,
    /// CRC-32C of every chunk, from the hash pass: such chunks (plain) go out with sendfile(2).
    crcs: Option<&'a [u32]>,
    stamp: FileStamp,
    run: &'a Run,
    plan: &'a Mutex<Option<SendPlan>>,
    /// Chunks held by the server at the first reply.
    held: &'a AtomicU64,
    max_conns: &'a AtomicU32,
    progress: &'a (dyn Fn(Progress) + Sync),
}

/// One connection of a push; returns how it ended and whether a chunk was acknowledged.
fn push_connection(sh: &PushShared<'_>) -> (Result<End, Fail>, bool) {
    let (mut link, cfg) = match connect(sh.opts) {
        Ok(x) => x,
        Err(f) => return (Err(f), false),
    };
    let wake = match Wake::new() {
        Ok(w) => Arc::new(w),
        Err(e) => return (Err(Fail::Final(local(e))), false),
    };
    sh.run.wakers.add(Arc::clone(&wake));
    let mut c = PushClient::new(Instant::now(), &cfg, sh.header.clone());
    let mut progressed = false;
    let r = push_loop(sh, &mut link, &mut c, &wake, &mut progressed);
    if let Some(p) = lock(sh.plan).as_mut() {
        p.release(c.in_flight());
    }
    sh.run.wakers.remove(&wake);
    sh.run.wakers.notify_others(&wake);
    if r.is_ok() {
        link.stream.close_gracefully(Duration::ZERO);
    }
    (r, progressed)
}

fn push_loop(
    sh: &PushShared<'_>,
    link: &mut Link,
    c: &mut PushClient,
    wake: &Arc<Wake>,
    progressed: &mut bool,
) -> Result<End, Fail> {
    let g = sh.header.geometry();
    let mut buf = Vec::new();
    let mut zout = Vec::new();
    let mut zc: Option<ChunkCompressor> = None;
    let io = |e: io::Error| retry(format!("connection: {e}"));
    loop {
        let now = Instant::now();
        if c.poll_timeout().is_some_and(|d| now >= d) {
            c.handle_timeout(now);
        }
        // Input first: Acks free chunks for re-sending and complete the plan.
        loop {
            let n = c.handle_input(Instant::now(), link.pending());
            link.start += n;
            let mut events = false;
            while let Some(ev) = c.poll_event() {
                events = true;
                match ev {
                    Event::PushAccepted {
                        have,
                        max_connections,
                    } => {
                        sh.max_conns.store(max_connections, Ordering::SeqCst);
                        let mut p = lock(sh.plan);
                        match p.as_mut() {
                            Some(p) => p.merge_have(&have),
                            None => {
                                sh.held.store(have.count(), Ordering::SeqCst);
                                *p = Some(SendPlan::new(g.full_chunk(), &have));
                            }
                        }
                        if let Some(p) = p.as_ref() {
                            let done = (0..g.full_chunk())
                                .filter(|&i| p.is_done(i))
                                .map(|i| u64::from(g.len(i)))
                                .sum();
                            sh.run.done_bytes.store(done, Ordering::SeqCst);
                        }
                    }
                    Event::Acked(entries) => {
                        let mut p = lock(sh.plan);
                        let Some(p) = p.as_mut() else { continue };
                        let mut wake_others = false;
                        for (chunk, crc) in entries {
                            match p.ack(chunk, crc) {
                                AckOutcome::Matched => {
                                    *progressed = true;
                                    let d = sh
                                        .run
                                        .done_bytes
                                        .fetch_add(u64::from(g.len(chunk)), Ordering::SeqCst);
                                    (sh.progress)(Progress {
                                        done: d + u64::from(g.len(chunk)),
                                        total: g.full_size(),
                                    });
                                }
                                AckOutcome::Mismatch { sent, acked } => {
                                    if sh.opts.verbose {
                                        eprintln!(
                                            "fastdp: chunk {chunk} acknowledged with CRC {acked:08x}, sent {sent:08x}: sending it again"
                                        );
                                    }
                                    wake_others = true;
                                }
                                _ => {}
                            }
                        }
                        if wake_others || p.is_complete() {
                            sh.run.wakers.notify_others(wake);
                        }
                    }
                    Event::Complete { file_name, .. } => return Ok(End::Complete(file_name)),
                    Event::Recycle => return Ok(End::Recycle),
                    Event::PeerError(e) => return Err(peer_error(e)),
                    Event::Failed(e) => return Err(machine_failure(e, c.handshake_failure())),
                    Event::PeerClosed { .. } => return Err(retry("server closed the connection")),
                    _ => {}
                }
            }
            if n == 0 && !events {
                break;
            }
        }
        while let Some(out) = c.poll_transmit() {
            link.write_all(&out).map_err(io)?;
        }
        if c.is_finished() {
            return Err(retry("connection ended"));
        }
        if sh.run.is_stopped() {
            return Err(retry("transfer stopped"));
        }
        let next = {
            let mut p = lock(sh.plan);
            match p.as_mut() {
                Some(p) => c.poll_send(Instant::now(), p),
                None => None,
            }
        };
        if let Some(sc) = next {
            // A file changed under the sender would fail the whole-file check: stop early.
            let now_stamp = sh.file.metadata().map(|m| FileStamp::from_metadata(&m));
            if now_stamp.ok() != Some(sh.stamp) {
                c.abort(ErrorMsg::new(ErrorCode::Internal, "source file changed"));
                while let Some(out) = c.poll_transmit() {
                    let _ = link.write_all(&out);
                }
                return Err(Fail::Final(local("the file changed while it was sent")));
            }
            let len = sc.len as usize;
            if let (Some(fd), Compress::None) = (link.stream.plain_fd(), sh.header.compress) {
                // The CRC from the hash pass, else from a pread pass over the chunk in small
                // pieces; the bytes then go out with sendfile(2), never copied by us.
                let crc = match sh.crcs.and_then(|c| c.get(sc.chunk as usize)).copied() {
                    Some(crc) => crc,
                    None => {
                        buf.resize(HASH_PIECE.min(len.max(1)), 0);
                        crc_of_range(sh.file, sc.offset, len, &mut buf)
                            .map_err(|e| Fail::Final(local(e)))?
                    }
                };
                let head = c.begin_chunk(sc.chunk, sc.len);
                if let Some(p) = lock(sh.plan).as_mut() {
                    p.sent(sc.chunk, crc);
                }
                link.write_all(&head).map_err(io)?;
                send_range(sh.file, fd, sc.offset, len)?;
                sh.run.wire_bytes.fetch_add(len as u64, Ordering::Relaxed);
                match link.try_read().map_err(io)? {
                    Got::Eof => c.handle_eof(Instant::now()),
                    Got::Data | Got::Nothing => {}
                }
                continue;
            }
            buf.resize(len, 0);
            sh.file
                .read_exact_at(&mut buf, sc.offset)
                .map_err(|e| Fail::Final(local(e)))?;
            let crc = crc32c(&buf);
            let payload: &[u8] = match sh.header.compress {
                Compress::None => &buf,
                Compress::Zstd => {
                    if zc.is_none() {
                        zc = Some(
                            ChunkCompressor::new(ZSTD_LEVEL)
                                .map_err(|e| Fail::Final(local(e.to_string())))?,
                        );
                    }
                    if let Some(z) = zc.as_mut() {
                        z.compress(&buf, &mut zout)
                            .map_err(|e| Fail::Final(local(e.to_string())))?;
                    }
                    &zout
                }
            };
            let head = c.begin_chunk(sc.chunk, payload.len() as u32);
            if let Some(p) = lock(sh.plan).as_mut() {
                p.sent(sc.chunk, crc);
            }
            link.write_all(&head).map_err(io)?;
            link.write_all(payload).map_err(io)?;
            sh.run
                .wire_bytes
                .fetch_add(payload.len() as u64, Ordering::Relaxed);
            match link.try_read().map_err(io)? {
                Got::Eof => c.handle_eof(Instant::now()),
                Got::Data | Got::Nothing => {}
            }
            continue;
        }
        while let Some(out) = c.poll_transmit() {
            link.write_all(&out).map_err(io)?;
        }
        match link.read(c.poll_timeout(), Some(wake)).map_err(io)? {
            Got::Data => {}
            Got::Eof => c.handle_eof(Instant::now()),
            Got::Nothing => c.handle_timeout(Instant::now()),
        }
    }
}

/// CRC-32C of bytes `offset..offset + len` of `file`, read with pread in `buf`-sized pieces.
fn crc_of_range(file: &File, offset: u64, len: usize, buf: &mut [u8]) -> io::Result<u32> {
    let mut crc = Crc32c::new();
    let mut done = 0usize;
    while done < len {
        let n = (len - done).min(buf.len());
        file.read_exact_at(&mut buf[..n], offset + done as u64)?;
        crc.update(&buf[..n]);
        done += n;
    }
    Ok(crc.value())
}

/// Sends bytes `offset..offset + len` of `file` to the socket `fd` with sendfile(2): the kernel
/// hands the file's cached pages to TCP, nothing is read into userspace (the CRC came from the
/// hash pass). A file cut short meanwhile is final; a socket error or timeout is retried.
fn send_range(file: &File, fd: std::os::fd::RawFd, offset: u64, len: usize) -> Result<(), Fail> {
    use std::os::fd::AsRawFd;
    let mut off = libc::off_t::try_from(offset)
        .map_err(|_| Fail::Final(local("chunk offset out of range")))?;
    let end = offset + len as u64;
    loop {
        let left = end.saturating_sub(off as u64) as usize;
        if left == 0 {
            return Ok(());
        }
        // SAFETY: sendfile(2) on two descriptors we hold open; `off` is a live off_t the
        // kernel advances by what it sent. No memory of ours is read or written but `off`.
        let n = unsafe { libc::sendfile(fd, file.as_raw_fd(), &mut off, left) };
        if n > 0 {
            continue;
        }
        if n == 0 {
            return Err(Fail::Final(local("the file changed while it was sent")));
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return Err(retry(format!("connection: {e}")));
    }
}

// ---------------------------------------------------------------------------------------------
// Pull
// ---------------------------------------------------------------------------------------------

/// A pull's resume record, beside its `.part`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
struct PullRecord {
    target: String,
    addr: String,
    transfer_id: String,
    one_chunk: u32,
    size: u64,
    checksum: String,
    file_name: String,
}

/// `NAME_OR_SHA256`: 64 hex digits name a SHA-256, anything else a name.
pub fn pull_target(s: &str) -> PullTarget {
    match hex::parse_sha256(&s.to_ascii_lowercase()) {
        Some(h) if s.len() == 64 => PullTarget::Sha256(h),
        _ => PullTarget::Name(s.to_owned()),
    }
}

struct PullState {
    record: Option<PullRecord>,
    attachment: Option<Arc<Attachment>>,
}

struct PullShared<'a> {
    opts: &'a ClientOptions,
    registry: &'a Arc<TransferRegistry>,
    /// The output folder's work folder (its descriptor) and the resume record's name there.
    work: &'a Dir,
    rec_name: &'a OsStr,
    target: &'a PullTarget,
    target_text: &'a str,
    tid: TransferId,
    run: &'a Run,
    state: &'a Mutex<PullState>,
    crcs: &'a MemoryCrcs,
    gate: &'a WriteGate,
    progress: &'a (dyn Fn(Progress) + Sync),
    held: &'a AtomicU64,
    restart: &'a AtomicBool,
}

/// Downloads `target` into `out` (fastdp.md 3): verified before it appears there.
pub fn pull(
    opts: &ClientOptions,
    target_text: &str,
    out: &Path,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<PullReport, ClientError> {
    let started = Instant::now();
    check_address(&opts.addr)?;
    let target = pull_target(target_text);
    let work = out.join(".ferry").join("fastdp");
    let ingest =
        IngestDir::new(out, &work).map_err(|e| local(format!("{}: {e}", out.display())))?;
    let registry = TransferRegistry::new(Publisher::without_catalog(ingest));
    // The record lives in the work folder, reached only through its descriptor (checked
    // private when ingest opened it), never by path (issue 15 item 3).
    let work = registry.publisher().ingest().work_dir();
    let mut key = Sha256::new();
    key.update(opts.addr.as_bytes());
    key.update([0]);
    key.update(target_text.as_bytes());
    let rec_name = OsString::from(format!("pull-{}.json", hex::encode(&key.finalize()[..16])));
    let mut tries = 0;
    loop {
        tries += 1;
        let record: Option<PullRecord> = read_record_at(work, &rec_name);
        let tid = record
            .as_ref()
            .and_then(|r| TransferId::parse(&r.transfer_id))
            .unwrap_or_else(|| TransferId::from_random(random_bytes::<16>()));
        // A resumed download reopens its part first, so the first request carries its Have.
        let attachment = record.as_ref().and_then(|r| {
            let spec = TransferSpec {
                size: r.size,
                block_size: r.one_chunk,
                expect: Expect::Sha256(Checksum::parse(&r.checksum)?.0),
                // Sparse: space is taken as chunks arrive (issue 15 item 12).
                preallocate: false,
            };
            registry.attach(&r.transfer_id, spec, 64).ok().map(Arc::new)
        });
        let run = Run::new();
        let state = Mutex::new(PullState {
            record: record.clone(),
            attachment,
        });
        let crcs = MemoryCrcs::default();
        let gate = WriteGate::default();
        let held = AtomicU64::new(
            lock(&state)
                .attachment
                .as_ref()
                .map_or(0, |a| have_of(a).count()),
        );
        let restart = AtomicBool::new(false);
        let sh = PullShared {
            opts,
            registry: &registry,
            work,
            rec_name: &rec_name,
            target: &target,
            target_text,
            tid,
            run: &run,
            state: &state,
            crcs: &crcs,
            gate: &gate,
            progress,
            held: &held,
            restart: &restart,
        };
        let mut conns = opts.parallel.clamp(1, 64);
        std::thread::scope(|s| {
            let sh = &sh;
            s.spawn(move || run_slot(sh.run, opts, true, || pull_connection(sh)));
            // The others join once the parameters are known.
            while !run.is_stopped() && lock(&state).attachment.is_none() {
                std::thread::sleep(Duration::from_millis(5));
            }
            if let Some(a) = lock(&state).attachment.as_ref() {
                conns = conns.min(a.blocks().max(1) as usize);
            }
            for _ in 1..conns {
                if run.is_stopped() {
                    break;
                }
                s.spawn(move || run_slot(sh.run, opts, false, || pull_connection(sh)));
            }
        });
        let attachment = lock(&state).attachment.take();
        let outcome = lock(&run.outcome).take();
        let rec = lock(&state).record.clone();
        match outcome {
            Some(Ok(path)) => {
                drop(attachment);
                let _ = work.remove_file(&rec_name);
                let rec = rec.ok_or_else(|| local("pull finished without parameters"))?;
                return Ok(PullReport {
                    target: target_text.to_owned(),
                    name: Path::new(&path)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    path,
                    size: rec.size,
                    sha256: rec.checksum.trim_start_matches("sha256:").to_owned(),
                    transfer_id: tid.to_string(),
                    chunks_held: held.load(Ordering::SeqCst),
                    wire_bytes: run.wire_bytes.load(Ordering::SeqCst),
                    connections: conns,
                    retries: run.retries.load(Ordering::SeqCst),
                    seconds: started.elapsed().as_secs_f64(),
                });
            }
            Some(Err(e)) => {
                drop(attachment);
                if restart.load(Ordering::SeqCst) && tries < 2 {
                    // The file changed on the server: the partial file is useless (3).
                    let _ = registry.discard(tid.as_str());
                    let _ = work.remove_file(&rec_name);
                    continue;
                }
                if matches!(e, ClientError::Refused(_)) {
                    let _ = registry.discard(tid.as_str());
                    let _ = work.remove_file(&rec_name);
                }
                return Err(e);
            }
            None => return Err(ClientError::Network("pull ended without an outcome".into())),
        }
    }
}

/// One connection of a pull.
fn pull_connection(sh: &PullShared<'_>) -> (Result<End, Fail>, bool) {
    let (mut link, cfg) = match connect(sh.opts) {
        Ok(x) => x,
        Err(f) => return (Err(f), false),
    };
    let (record, att) = {
        let st = lock(sh.state);
        (st.record.clone(), st.attachment.clone())
    };
    let have = att.as_ref().map_or_else(Have::new, |a| have_of(a));
    let resume = !have.is_empty();
    let request = PullRequest {
        transfer_id: sh.tid,
        target: sh.target.clone(),
        accept_zstd: sh.opts.compress == Compress::Zstd,
        have,
        one_chunk: record.as_ref().filter(|_| resume).map(|r| r.one_chunk),
        checksum: record
            .as_ref()
            .filter(|_| resume)
            .and_then(|r| Checksum::parse(&r.checksum)),
    };
    let mut c = PullClient::new(Instant::now(), &cfg, request);
    let mut progressed = false;
    let r = pull_loop(sh, &mut link, &mut c, &mut progressed);
    if r.is_ok() {
        link.stream.close_gracefully(Duration::from_millis(100));
    }
    (r, progressed)
}

/// The parameters a reply gives, checked against the resume record (or recorded), and the
/// `.part` attached.
fn accept_reply(sh: &PullShared<'_>, r: &PullReply) -> Result<Arc<Attachment>, Fail> {
    let mut st = lock(sh.state);
    if let Some(rec) = &st.record {
        let same = rec.size == r.full_size
            && rec.one_chunk == r.one_chunk
            && Checksum::parse(&rec.checksum) == Some(r.checksum);
        if !same {
            sh.restart.store(true, Ordering::SeqCst);
            return Err(Fail::Final(ClientError::Refused(
                "the file changed on the server since the partial download began".into(),
            )));
        }
    }
    if let Some(a) = &st.attachment {
        return Ok(Arc::clone(a));
    }
    check_reply(sh, r)?;
    let rec = PullRecord {
        target: sh.target_text.to_owned(),
        addr: sh.opts.addr.clone(),
        transfer_id: sh.tid.to_string(),
        one_chunk: r.one_chunk,
        size: r.full_size,
        checksum: r.checksum.to_text(),
        file_name: r.file_name.clone(),
    };
    if st.record.is_none() {
        let _ = sh.registry.discard(sh.tid.as_str());
        write_record_at(sh.work, sh.rec_name, &rec).map_err(|e| Fail::Final(local(e)))?;
        st.record = Some(rec);
    }
    let spec = TransferSpec {
        size: r.full_size,
        block_size: r.one_chunk,
        expect: Expect::Sha256(r.checksum.0),
        // Sparse, filled as chunks arrive: a size a hostile server declares is checked against
        // the free space above, never preallocated (issue 15 item 12).
        preallocate: false,
    };
    let att = sh
        .registry
        .attach(sh.tid.as_str(), spec, 64)
        .map_err(|e| match e {
            TransferError::Ingest(IngestError::NoSpace) => {
                Fail::Final(local("no space left in the output folder"))
            }
            e => Fail::Final(local(e)),
        })?;
    let _ = att.hash_in_background();
    let att = Arc::new(att);
    sh.held.store(have_of(&att).count(), Ordering::SeqCst);
    st.attachment = Some(Arc::clone(&att));
    Ok(att)
}

/// What a server's reply may make this client write (issue 15 items 8 and 12): the name asked
/// for (a SHA-256 request takes the server's name, but never a dotfile), and a size that fits
/// the output folder's free space.
fn check_reply(sh: &PullShared<'_>, r: &PullReply) -> Result<(), Fail> {
    let refuse = |why: String| Err(Fail::Final(ClientError::Refused(why)));
    if let PullTarget::Name(asked) = sh.target {
        if r.file_name != *asked {
            return refuse(format!(
                "server offered {:?} for {:?}: not the name asked for",
                crate::names::printable(&r.file_name),
                crate::names::printable(asked)
            ));
        }
    }
    if r.file_name.starts_with('.') {
        return refuse(format!(
            "server offered the dotfile {:?}: refused",
            crate::names::printable(&r.file_name)
        ));
    }
    let free = sh
        .registry
        .publisher()
        .ingest()
        .available_bytes()
        .unwrap_or(u64::MAX);
    if r.full_size > free {
        return Err(Fail::Final(local(format!(
            "{} bytes offered, {free} bytes free in the output folder",
            r.full_size
        ))));
    }
    Ok(())
}

fn have_of(t: &crate::ingest::Transfer) -> Have {
    Have::normalised(
        t.durable_ranges(MAX_HAVE_RANGES)
            .into_iter()
            .map(|r| (r.start as u32, r.end as u32))
            .collect(),
    )
}

fn pull_loop(
    sh: &PullShared<'_>,
    link: &mut Link,
    c: &mut PullClient,
    progressed: &mut bool,
) -> Result<End, Fail> {
    let io = |e: io::Error| retry(format!("connection: {e}"));
    // The opening: up to the reply.
    let (att, reply) = loop {
        let mut accepted = None;
        loop {
            let n = c.handle_input(Instant::now(), link.pending()).consumed;
            link.start += n;
            let mut events = false;
            while let Some(ev) = c.poll_event() {
                events = true;
                match ev {
                    Event::PullAccepted(r) => accepted = Some(r),
                    Event::PeerError(e) => {
                        if e.code == ErrorCode::ParameterMismatch {
                            sh.restart.store(true, Ordering::SeqCst);
                        }
                        return Err(peer_error(e));
                    }
                    Event::Failed(e) => return Err(machine_failure(e, c.handshake_failure())),
                    Event::PeerClosed { .. } => return Err(retry("server closed the connection")),
                    _ => {}
                }
            }
            if accepted.is_some() || (n == 0 && !events) {
                break;
            }
        }
        while let Some(out) = c.poll_transmit() {
            link.write_all(&out).map_err(io)?;
        }
        if let Some(r) = accepted {
            let att = accept_reply(sh, &r)?;
            link.enlarge();
            break (att, r);
        }
        if c.is_finished() {
            return Err(retry("connection ended"));
        }
        match link.read(c.poll_timeout(), None).map_err(io)? {
            Got::Data => {}
            Got::Eof => c.handle_eof(Instant::now()),
            Got::Nothing => c.handle_timeout(Instant::now()),
        }
    };
    let g = reply.geometry();
    let mut sink = ChunkSink::new(&att, sh.crcs, sh.gate, g, reply.compress);
    let local_fail = |e: LocalError| Fail::Final(local(e));
    loop {
        // A deadline that passed while chunks kept arriving (the 250 ms Ack) fires now.
        let now = Instant::now();
        if c.poll_timeout().is_some_and(|d| now >= d) {
            c.handle_timeout(now);
        }
        loop {
            let mut bad = None;
            let n;
            {
                let r = c.handle_input(Instant::now(), link.pending());
                n = r.consumed;
                if let Some(p) = r.payload {
                    match sink.payload(p) {
                        Ok(None) => {}
                        Ok(Some(why)) => bad = Some((p.chunk, why)),
                        Err(e) => {
                            link.start += n;
                            return Err(local_fail(e));
                        }
                    }
                }
                link.start += n;
            }
            if let Some((chunk, why)) = bad {
                c.chunk_failed(chunk, &why);
            }
            let mut events = false;
            while let Some(ev) = c.poll_event() {
                events = true;
                let now = Instant::now();
                match ev {
                    Event::ChunkStart { chunk, .. } => sink.start(chunk).map_err(local_fail)?,
                    Event::ChunkEnd { chunk } => {
                        let before = sink.stored;
                        sink.end(now, c, chunk).map_err(local_fail)?;
                        if sink.stored > before {
                            *progressed = true;
                            let d = sh
                                .run
                                .done_bytes
                                .fetch_add(u64::from(g.len(chunk)), Ordering::SeqCst);
                            (sh.progress)(Progress {
                                done: d + u64::from(g.len(chunk)),
                                total: g.full_size(),
                            });
                        }
                    }
                    Event::ChunkAborted { .. } => sink.abort(),
                    Event::AckDue(chunks) => {
                        let d = sink.durable(&chunks).map_err(local_fail)?;
                        c.ack(&d);
                    }
                    Event::FinReceived(chunks) => {
                        let d = sink.durable(&chunks).map_err(local_fail)?;
                        let all = att.is_complete();
                        c.answer_fin(now, &d, all);
                    }
                    Event::Verify => {
                        let name = reply.file_name.clone();
                        let r = commit_once(&att, &name, &mut || {
                            c.handle_timeout(Instant::now());
                            while let Some(out) = c.poll_transmit() {
                                let _ = link.write_all(&out);
                            }
                        });
                        match r {
                            Ok(p) => {
                                c.complete(&p.committed.name, reply.checksum);
                                while let Some(out) = c.poll_transmit() {
                                    let _ = link.write_all(&out);
                                }
                                sh.run
                                    .wire_bytes
                                    .fetch_add(sink.wire_bytes, Ordering::Relaxed);
                                return Ok(End::Complete(
                                    p.committed.path.to_string_lossy().into_owned(),
                                ));
                            }
                            Err(TransferError::Failed(e))
                                if matches!(*e, IngestError::Mismatch { .. }) =>
                            {
                                c.fail(ErrorMsg::new(
                                    ErrorCode::ChecksumMismatch,
                                    "SHA-256 of the file differs",
                                ));
                                while let Some(out) = c.poll_transmit() {
                                    let _ = link.write_all(&out);
                                }
                                sh.restart.store(true, Ordering::SeqCst);
                                return Err(Fail::Final(ClientError::Refused(format!(
                                    "downloaded file does not match its SHA-256: {e}"
                                ))));
                            }
                            Err(e) => return Err(Fail::Final(local(e))),
                        }
                    }
                    Event::PeerError(e) => {
                        sh.run
                            .wire_bytes
                            .fetch_add(sink.wire_bytes, Ordering::Relaxed);
                        if e.code == ErrorCode::ParameterMismatch {
                            sh.restart.store(true, Ordering::SeqCst);
                        }
                        return Err(peer_error(e));
                    }
                    Event::Failed(e) => {
                        while let Some(out) = c.poll_transmit() {
                            let _ = link.write_all(&out);
                        }
                        sh.run
                            .wire_bytes
                            .fetch_add(sink.wire_bytes, Ordering::Relaxed);
                        return Err(retry(e.to_string()));
                    }
                    Event::PeerClosed { .. } => {
                        sh.run
                            .wire_bytes
                            .fetch_add(sink.wire_bytes, Ordering::Relaxed);
                        return Err(retry("server closed the connection"));
                    }
                    _ => {}
                }
            }
            if n == 0 && !events {
                break;
            }
        }
        while let Some(out) = c.poll_transmit() {
            link.write_all(&out).map_err(io)?;
        }
        if c.is_finished() {
            sh.run
                .wire_bytes
                .fetch_add(sink.wire_bytes, Ordering::Relaxed);
            if sh.run.is_stopped() {
                return Err(retry("transfer stopped"));
            }
            // Recycled by the server (its FIN answered while chunks are missing): reconnect.
            return Ok(End::Recycle);
        }
        if sh.run.is_stopped() {
            return Err(retry("transfer stopped"));
        }
        match link.read(c.poll_timeout(), None).map_err(io)? {
            Got::Data => {}
            Got::Eof => c.handle_eof(Instant::now()),
            Got::Nothing => c.handle_timeout(Instant::now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(data: &[u8]) -> File {
        let dir = std::env::temp_dir().join(format!(
            "ferry-fastdp-client-{}-{}",
            std::process::id(),
            hex::encode(&random_bytes::<8>())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f.bin");
        std::fs::write(&p, data).unwrap();
        let f = File::open(&p).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        f
    }

    /// The one hash pass gives the whole-file SHA-256 and, per chunk, the CRC-32C the send pass
    /// then trusts: chunks smaller than, equal to and larger than a read piece, with a short
    /// tail and with an exact multiple.
    #[test]
    fn hash_pass_gives_sha256_and_one_crc_per_chunk() {
        let data: Vec<u8> = (0..(3 * HASH_PIECE + 12_345) as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for (len, chunk) in [
            (data.len(), 4096u32),
            (data.len(), HASH_PIECE as u32),
            (data.len(), 4 * HASH_PIECE as u32),
            (2 * HASH_PIECE, HASH_PIECE as u32),
            (0, 262_144),
            (1, 262_144),
        ] {
            let bytes = &data[..len];
            let f = temp_file(bytes);
            let (sha, crcs) = hash_file(&f, len as u64, chunk).unwrap();
            assert_eq!(
                sha,
                <[u8; 32]>::from(Sha256::digest(bytes)),
                "{len} / {chunk}"
            );
            let want: Vec<u32> = bytes.chunks(chunk as usize).map(crc32c).collect();
            assert_eq!(crcs, want, "{len} / {chunk}");
            let mut buf = vec![0u8; 1000];
            for (i, c) in want.iter().enumerate() {
                let at = i * chunk as usize;
                let n = (len - at).min(chunk as usize);
                assert_eq!(crc_of_range(&f, at as u64, n, &mut buf).unwrap(), *c);
            }
        }
    }

    /// sendfile(2) of a range puts exactly those bytes on the socket; a range past the end of
    /// a file that shrank is final (not retried forever).
    #[test]
    fn send_range_sends_the_bytes_of_the_range_and_a_short_file_is_final() {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let f = temp_file(&data);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tx = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut rx, _) = l.accept().unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            rx.read_to_end(&mut got).unwrap();
            got
        });
        assert!(send_range(&f, tx.as_raw_fd(), 1000, 200_000).is_ok());
        let short = send_range(&f, tx.as_raw_fd(), 250_000, 60_000);
        assert!(matches!(short, Err(Fail::Final(_))));
        drop(tx);
        let got = reader.join().unwrap();
        assert_eq!(&got[..200_000], &data[1000..201_000]);
        assert_eq!(&got[200_000..], &data[250_000..]);
    }
}
