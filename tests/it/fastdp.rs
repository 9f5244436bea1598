//! End-to-end tests of FastDP (`shared/specs/fastdp.md`): the real `ferry` binary on loopback,
//! spoken to by ferry's own client, by a 1.1.0 sender written from the spec's description of
//! `cli.py` (`tests/interop/fastdp_v110_sender.py`), by a test 1.1.0 server
//! (`tests/interop/fastdp_v110_server.py`), by raw bytes over `TcpStream` for every row of
//! section 5 (each followed by a normal upload: F39), and through a test relay that counts,
//! throttles or corrupts the bytes on the wire. Tests are named after the checklist items they
//! cover; items tested beside the code are named in `src/proto/fastdp/` (F1-F15 codecs and
//! machines) and `src/driver/fastdp/` (F24 state, F34 forms). Every socket has timeouts and
//! every child a deadline.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::harness::{pseudo_random, sha256_file, tree, Server, TempDir, FERRY};

/// Read/write timeout of every test socket.
const T: Duration = Duration::from_secs(20);
/// Time limit of every client run.
const RUN: Duration = Duration::from_secs(120);
const EMPTY_SHA: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sha(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}

/// `ferry fastdp serve` on port 0 over `root`, verbose, with `extra` flags.
fn serve(root: &Path, extra: &[&str]) -> Server {
    let mut args = vec![
        "fastdp",
        "serve",
        "--bind",
        "127.0.0.1:0",
        "--root",
        root.to_str().unwrap(),
        "-v",
    ];
    args.extend_from_slice(extra);
    Server::start(&args, 1)
}

/// Runs `ferry ARGS` with `XDG_CACHE_HOME=cache` (the push resume records) to its end.
fn run(args: &[&str], cache: &Path, timeout: Duration) -> Output {
    let child = Command::new(FERRY)
        .args(args)
        .env("XDG_CACHE_HOME", cache)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferry");
    wait_output(child, timeout, &format!("ferry {args:?}"))
}

fn wait_output(mut child: Child, timeout: Duration, what: &str) -> Output {
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let to = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let te = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not finish within {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&te.join().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: to.join().unwrap(),
        stderr: te.join().unwrap(),
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn send(addr: &str, file: &Path, cache: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["fastdp", "send", "--addr", addr, file.to_str().unwrap()];
    args.extend_from_slice(extra);
    run(&args, cache, RUN)
}

fn send_ok(addr: &str, file: &Path, cache: &Path, extra: &[&str]) -> Value {
    let mut e = vec!["--json"];
    e.extend_from_slice(extra);
    let o = send(addr, file, cache, &e);
    assert!(o.status.success(), "send failed: {}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("json: {}", text(&o)))
}

fn get(addr: &str, item: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "fastdp",
        "get",
        "--addr",
        addr,
        "--out",
        out.to_str().unwrap(),
        item,
    ];
    args.extend_from_slice(extra);
    run(&args, out, RUN)
}

/// F39: after a bad row the server still stores a normal upload.
fn assert_serves(addr: &str, t: &TempDir) {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let p = t.join(&format!("probe-{n}.bin"));
    std::fs::write(&p, pseudo_random(n + 77, 70_000)).unwrap();
    let v = send_ok(addr, &p, &t.join("probe-cache"), &["--parallel", "2"]);
    assert_eq!(v["sha256"], sha(&std::fs::read(&p).unwrap()));
}

fn python() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/python");
    assert!(
        p.exists(),
        "{} missing: run `make venv` (tests/requirements.txt pins zstandard)",
        p.display()
    );
    p
}

fn interop(script: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(script)
}

// ---------------------------------------------------------------------------------------------
// Raw connections

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.set_write_timeout(Some(T)).unwrap();
    s
}

fn request(addr: &str, version: &str) -> Vec<u8> {
    format!(
        "GET /fastdp-endpoint HTTP/1.1\r\nHost: {addr}\r\nUpgrade: fastdp\r\nConnection: Upgrade\r\nSec-FastDP-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-FastDP-Version: {version}\r\n\r\n"
    )
    .into_bytes()
}

fn switching(version: &str) -> Vec<u8> {
    format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: fastdp\r\nConnection: Upgrade\r\nSec-FastDP-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-FastDP-Version: {version}\r\n\r\n").into_bytes()
}

fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    s.read_exact(&mut b).unwrap();
    b
}

fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = s.read_to_end(&mut v);
    v
}

/// Connects and upgrades (1.2.0 unless `version` says otherwise).
fn upgraded(addr: &str, version: &str) -> TcpStream {
    let mut s = connect(addr);
    s.write_all(&request(addr, version)).unwrap();
    let want = switching(version);
    assert_eq!(read_n(&mut s, want.len()), want);
    s
}

fn jmsg(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

fn read_jmsg(s: &mut TcpStream) -> Value {
    let len = u32::from_be_bytes(read_n(s, 4).try_into().unwrap()) as usize;
    assert!(len <= 65_536, "JMSG of {len} bytes");
    serde_json::from_slice(&read_n(s, len)).unwrap()
}

fn chunk(i: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = i.to_be_bytes().to_vec();
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

const FIN: [u8; 8] = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];

fn tid(n: u64) -> String {
    format!("3d0f6c1a-5b7e-4e21-9a51-{n:012x}")
}

fn header(name: &str, data: &[u8], one_chunk: u64, id: &str, compress: &str) -> Value {
    json!({
        "OneChunk": one_chunk,
        "FullChunk": (data.len() as u64).div_ceil(one_chunk),
        "FullSize": data.len(),
        "DPVersion": "1.2.0",
        "CompressType": compress,
        "FileName": name,
        "TransferId": id,
        "Checksum": format!("sha256:{}", sha(data)),
    })
}

/// Sends a header and returns the reply (`Type` Header or Error).
fn open_push(addr: &str, h: &Value) -> (TcpStream, Value) {
    let mut s = upgraded(addr, "1.2.0");
    s.write_all(&jmsg(h.to_string().as_bytes())).unwrap();
    let r = read_jmsg(&mut s);
    (s, r)
}

/// Expects an Error JMSG with `code`, then the close (F31).
fn expect_error(s: &mut TcpStream, code: &str) -> Value {
    let e = read_jmsg(s);
    assert_eq!(e["Type"], "Error", "{e}");
    assert_eq!(e["Code"], code, "{e}");
    assert!(read_all(s).is_empty(), "bytes after the Error");
    e
}

/// Reads messages until Complete (Acks in between); returns (acks seen, Complete).
fn until_complete(s: &mut TcpStream) -> (Vec<Value>, Value) {
    let mut acks = Vec::new();
    loop {
        let m = read_jmsg(s);
        match m["Type"].as_str() {
            Some("Ack") => acks.push(m),
            Some("Complete") => return (acks, m),
            _ => panic!("unexpected {m}"),
        }
    }
}

fn crc32c(b: &[u8]) -> u64 {
    // Bitwise CRC-32C, independent of the library's.
    let mut c: u32 = !0;
    for &x in b {
        c ^= u32::from(x);
        for _ in 0..8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
        }
    }
    u64::from(!c)
}

// ---------------------------------------------------------------------------------------------
// A relay: counts client-to-server bytes, may throttle them, corrupt one byte, and switch its
// upstream (a restarted server).

struct Relay {
    addr: String,
    up: Arc<Mutex<String>>,
    c2s: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    /// `throttle`: pause after every 64 KiB forwarded; `corrupt`: flip the byte at this offset of
    /// the first connection's client-to-server stream.
    fn start(up: &str, throttle: Option<Duration>, corrupt: Option<u64>) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let up = Arc::new(Mutex::new(up.to_string()));
        let c2s = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (up2, c2s2, stop2) = (up.clone(), c2s.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut first = true;
            while !stop2.load(Ordering::SeqCst) {
                let (c, _) = match l.accept() {
                    Ok(x) => x,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                c.set_nonblocking(false).unwrap();
                let target = up2.lock().unwrap().clone();
                let Ok(s) = TcpStream::connect(&target) else {
                    continue;
                };
                let corrupt_here = if first { corrupt } else { None };
                first = false;
                let (c2, s2) = (c.try_clone().unwrap(), s.try_clone().unwrap());
                let (count, stop3) = (c2s2.clone(), stop2.clone());
                std::thread::spawn(move || pipe(c, s, Some(count), throttle, corrupt_here, stop3));
                let stop4 = stop2.clone();
                std::thread::spawn(move || pipe(s2, c2, None, None, None, stop4));
            }
        });
        Relay {
            addr,
            up,
            c2s,
            stop,
        }
    }

    fn bytes(&self) -> u64 {
        self.c2s.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn pipe(
    mut from: TcpStream,
    mut to: TcpStream,
    count: Option<Arc<AtomicU64>>,
    throttle: Option<Duration>,
    corrupt: Option<u64>,
    stop: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pos = 0u64;
    let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
    loop {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => break,
        };
        if let Some(at) = corrupt {
            if at >= pos && at < pos + n as u64 {
                buf[(at - pos) as usize] ^= 0x5a;
            }
        }
        pos += n as u64;
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        if let Some(c) = &count {
            c.fetch_add(n as u64, Ordering::SeqCst);
        }
        if let Some(d) = throttle {
            std::thread::sleep(d);
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Waits until `cond` holds (polling every 10 ms), failing with `what` after `limit`.
fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Visible (non-dot) files of a folder.
fn visible(dir: &Path) -> Vec<String> {
    tree(dir).into_iter().map(|(n, _)| n).collect()
}

fn work_dir(root: &Path) -> PathBuf {
    root.join(".ferry/ingest/fastdp")
}

// ---------------------------------------------------------------------------------------------
// Push and pull with ferry's client

#[test]
fn f9_f18_f20_f26_f37_push_then_pull_by_name_and_by_sha256_byte_identical() {
    let t = TempDir::new("fdp-basic");
    let root = t.join("share");
    std::fs::create_dir_all(&root).unwrap();
    let srv = serve(&root, &[]);
    let addr = srv.addr("fastdp");
    let cache = t.join("cache");
    let src = t.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let files: [(&str, usize); 5] = [
        ("empty.bin", 0),
        ("small.txt", 5),
        ("one-chunk.bin", 262_144),
        ("odd.bin", 3_000_001),
        ("twelve-mib.bin", 12 << 20),
    ];
    for (i, (name, len)) in files.iter().enumerate() {
        let p = src.join(name);
        std::fs::write(&p, pseudo_random(i as u64, *len)).unwrap();
        let v = send_ok(&addr, &p, &cache, &["--parallel", "4"]);
        assert_eq!(v["stored_as"], *name, "{v}");
        assert_eq!(v["sha256"], hex(&sha256_file(&p)));
        assert_eq!(sha256_file(&root.join(name)), sha256_file(&p), "{name}");
    }
    // F26: nothing but the files is visible; the transfers left only completion records.
    assert_eq!(visible(&root).len(), files.len());
    for e in std::fs::read_dir(work_dir(&root)).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        assert!(n.ends_with(".done"), "left in the ingest area: {n}");
    }
    // F37: pull by name and by SHA-256, parameters chosen by the server.
    let out = t.join("out");
    let o = get(&addr, "odd.bin", &out, &["--parallel", "3", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["name"], "odd.bin");
    let twelve = hex(&sha256_file(&src.join("twelve-mib.bin")));
    let o = get(&addr, &twelve, &out, &["--parallel", "4"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = get(&addr, "empty.bin", &out, &[]);
    assert!(o.status.success(), "F20 pull of an empty file: {}", text(&o));
    for n in ["odd.bin", "twelve-mib.bin", "empty.bin"] {
        assert_eq!(sha256_file(&out.join(n)), sha256_file(&src.join(n)), "{n}");
    }
    assert_eq!(visible(&out).len(), 3);
    // Not found, and nothing written.
    let o = get(&addr, "missing.bin", &out, &[]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not-found"));
    assert_eq!(visible(&out).len(), 3);
}

#[test]
fn f1_f7_f10_f12_f13_f18_raw_push_of_the_2_13_example() {
    let t = TempDir::new("fdp-213");
    let root = t.join("share");
    let srv = serve(&root, &[]);
    let addr = srv.addr("fastdp");
    let h = header("a.txt", b"AAAA", 4096, "3d0f6c1a-5b7e-4e21-9a51-7f2c0e9b4d10", "None");
    let body = serde_json::to_vec(&h).unwrap();
    let mut s = upgraded(&addr, "1.2.0");
    s.write_all(&jmsg(&body)).unwrap();
    let len = u32::from_be_bytes(read_n(&mut s, 4).try_into().unwrap());
    let reply: Value = serde_json::from_slice(&read_n(&mut s, len as usize)).unwrap();
    // F7: every field echoed unchanged, plus Type, Have, MaxConnections.
    for (k, v) in h.as_object().unwrap() {
        assert_eq!(&reply[k], v, "{k}");
    }
    assert_eq!(reply["Type"], "Header");
    assert_eq!(reply["Have"], json!([]));
    assert_eq!(reply["MaxConnections"], 8);
    s.write_all(&chunk(0, b"AAAA")).unwrap();
    // F12, F13: every chunk held, so acknowledged at once with the CRC-32C of "AAAA".
    assert_eq!(
        read_n(&mut s, 4 + 0x26),
        b"\0\0\0\x26{\"Type\":\"Ack\",\"Chunks\":[[0,50687219]]}".to_vec()
    );
    assert_eq!(crc32c(b"AAAA"), 50_687_219);
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    s.write_all(&FIN).unwrap();
    assert_eq!(read_n(&mut s, 30), b"\0\0\0\x1a{\"Type\":\"Ack\",\"Chunks\":[]}".to_vec());
    let done = read_jmsg(&mut s);
    assert_eq!(done["Type"], "Complete");
    assert_eq!(done["FileName"], "a.txt");
    assert_eq!(done["Checksum"], h["Checksum"]);
    assert!(read_all(&mut s).is_empty());
    // F18: Complete came after the file was in place.
    assert_eq!(std::fs::read(root.join("a.txt")).unwrap(), b"AAAA");
}

#[test]
fn f20_raw_empty_file_completes_with_fin_and_is_served() {
    let t = TempDir::new("fdp-empty");
    let root = t.join("share");
    let srv = serve(&root, &[]);
    let addr = srv.addr("fastdp");
    let (mut s, r) = open_push(&addr, &header("nothing", b"", 4096, &tid(20), "None"));
    assert_eq!(r["Have"], json!([]), "{r}");
    assert_eq!(r["FullChunk"], 0);
    assert_eq!(r["Checksum"], format!("sha256:{EMPTY_SHA}"));
    s.write_all(&FIN).unwrap();
    let (acks, done) = until_complete(&mut s);
    assert_eq!(acks, vec![json!({"Type":"Ack","Chunks":[]})]);
    assert_eq!(done["FileName"], "nothing");
    assert_eq!(std::fs::metadata(root.join("nothing")).unwrap().len(), 0);
    let out = t.join("out");
    let o = get(&addr, EMPTY_SHA, &out, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::metadata(out.join("nothing")).unwrap().len(), 0);
}

#[test]
fn f11_f15_zstd_push_and_pull_and_duplicate_chunks() {
    let t = TempDir::new("fdp-zstd");
    let root = t.join("share");
    let srv = serve(&root, &[]);
    let addr = srv.addr("fastdp");
    let src = t.join("log.txt");
    let line = b"2026-12-06 12:00:00 INFO fastdp: a compressible line of a log file\n";
    let data: Vec<u8> = line.iter().cycle().take(6 << 20).copied().collect();
    std::fs::write(&src, &data).unwrap();
    let v = send_ok(&addr, &src, &t.join("c"), &["--compress", "zstd"]);
    assert!(v["wire_bytes"].as_u64().unwrap() < (data.len() / 10) as u64, "{v}");
    assert_eq!(std::fs::read(root.join("log.txt")).unwrap(), data);
    let out = t.join("out");
    let o = get(&addr, "log.txt", &out, &["--compress", "zstd", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["wire_bytes"].as_u64().unwrap() < (data.len() / 10) as u64, "{v}");
    assert_eq!(std::fs::read(out.join("log.txt")).unwrap(), data);
    // F15: the same chunk twice on one connection is no error; the latest copy wins.
    let d = pseudo_random(15, 8192);
    let (mut s, _) = open_push(&addr, &header("dup.bin", &d, 4096, &tid(15), "None"));
    s.write_all(&chunk(0, &d[..4096])).unwrap();
    s.write_all(&chunk(0, &d[..4096])).unwrap();
    s.write_all(&chunk(1, &d[4096..])).unwrap();
    s.write_all(&FIN).unwrap();
    let (_, done) = until_complete(&mut s);
    assert_eq!(done["FileName"], "dup.bin");
    assert_eq!(std::fs::read(root.join("dup.bin")).unwrap(), d);
}

#[test]
fn f27_a_taken_name_becomes_stem_1_and_identical_bytes_are_stored_once() {
    let t = TempDir::new("fdp-names");
    let root = t.join("share");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("a.txt"), b"already here").unwrap();
    let srv = serve(&root, &[]);
    let addr = srv.addr("fastdp");
    let p = t.join("a.txt");
    std::fs::write(&p, b"new bytes").unwrap();
    let v = send_ok(&addr, &p, &t.join("c"), &[]);
    assert_eq!(v["stored_as"], "a-1.txt");
    assert_eq!(std::fs::read(root.join("a.txt")).unwrap(), b"already here");
    assert_eq!(std::fs::read(root.join("a-1.txt")).unwrap(), b"new bytes");
    std::fs::write(&p, b"already here").unwrap();
    let v = send_ok(&addr, &p, &t.join("c"), &[]);
    assert_eq!(v["stored_as"], "a.txt", "same bytes: nothing new stored");
    assert_eq!(visible(&root), ["a-1.txt", "a.txt"]);
}

#[test]
fn f24_a_completed_transfer_id_gets_every_chunk_held_and_complete_on_fin() {
    let t = TempDir::new("fdp-done");
    let root = t.join("share");
    let srv = serve(&root, &[]);
    let addr = srv.addr("fastdp");
    let d = pseudo_random(24, 10_000);
    let h = header("kept.bin", &d, 4096, &tid(24), "None");
    let (mut s, _) = open_push(&addr, &h);
    for i in 0..3u32 {
        let a = i as usize * 4096;
        s.write_all(&chunk(i, &d[a..(a + 4096).min(d.len())])).unwrap();
    }
    s.write_all(&FIN).unwrap();
    until_complete(&mut s);
    // The same TransferId again: Have is every chunk, a FIN gets an empty Ack and Complete.
    let (mut s, r) = open_push(&addr, &h);
    assert_eq!(r["Have"], json!([[0, 3]]));
    s.write_all(&FIN).unwrap();
    let (acks, done) = until_complete(&mut s);
    assert_eq!(acks, vec![json!({"Type":"Ack","Chunks":[]})]);
    assert_eq!(done["FileName"], "kept.bin");
    // F17 for a completed id: other parameters are a mismatch.
    let mut other = h.clone();
    other["FileName"] = json!("other.bin");
    let (mut s, r) = open_push(&addr, &other);
    assert_eq!(r["Code"], "parameter-mismatch", "{r}");
    assert!(read_all(&mut s).is_empty());
    assert_eq!(visible(&root), ["kept.bin"]);
}
