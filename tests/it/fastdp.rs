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
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
        }
    }
    u64::from(!c)
}

// ---------------------------------------------------------------------------------------------
// A relay: counts client-to-server bytes, may throttle them, corrupt one byte, and switch its
// upstream (a restarted server).

struct Relay {
    addr: String,
    /// Pause after each 64 KiB forwarded, in microseconds (0: none); adjustable.
    throttle_us: Arc<AtomicU64>,
    up: Arc<Mutex<String>>,
    c2s: Arc<AtomicU64>,
    s2c: Arc<AtomicU64>,
    conns: Arc<AtomicU64>,
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
        let s2c = Arc::new(AtomicU64::new(0));
        let conns = Arc::new(AtomicU64::new(0));
        let throttle_us = Arc::new(AtomicU64::new(throttle.map_or(0, |d| d.as_micros() as u64)));
        let th2 = throttle_us.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let (up2, c2s2, stop2) = (up.clone(), c2s.clone(), stop.clone());
        let (s2c2, conns2) = (s2c.clone(), conns.clone());
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
                conns2.fetch_add(1, Ordering::SeqCst);
                let corrupt_here = if first { corrupt } else { None };
                first = false;
                let (c2, s2) = (c.try_clone().unwrap(), s.try_clone().unwrap());
                let (count, stop3) = (c2s2.clone(), stop2.clone());
                let th = th2.clone();
                std::thread::spawn(move || pipe(c, s, Some(count), th, corrupt_here, stop3));
                let (stop4, back, th) = (stop2.clone(), s2c2.clone(), th2.clone());
                std::thread::spawn(move || pipe(s2, c2, Some(back), th, None, stop4));
            }
        });
        Relay {
            addr,
            throttle_us,
            up,
            c2s,
            s2c,
            conns,
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
    throttle_us: Arc<AtomicU64>,
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
        let us = throttle_us.load(Ordering::Relaxed);
        if us > 0 {
            std::thread::sleep(Duration::from_micros(us));
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

/// Waits until `counter` has not moved for 300 ms (a killed peer's bytes drained).
fn settled(counter: &AtomicU64) -> u64 {
    let mut last = counter.load(Ordering::SeqCst);
    let mut still = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    while still.elapsed() < Duration::from_millis(300) {
        assert!(Instant::now() < deadline, "the relay never went quiet");
        std::thread::sleep(Duration::from_millis(20));
        let now = counter.load(Ordering::SeqCst);
        if now != last {
            last = now;
            still = Instant::now();
        }
    }
    last
}

/// Durable blocks recorded in the bitmaps of the transfers in `work`.
fn durable_bits(work: &Path) -> u32 {
    std::fs::read_dir(work).map_or(0, |d| {
        d.flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".bitmap"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .map(|b| {
                b.get(32..)
                    .unwrap_or(&[])
                    .iter()
                    .map(|x| x.count_ones())
                    .sum::<u32>()
            })
            .sum()
    })
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
    assert!(
        o.status.success(),
        "F20 pull of an empty file: {}",
        text(&o)
    );
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
    let h = header(
        "a.txt",
        b"AAAA",
        4096,
        "3d0f6c1a-5b7e-4e21-9a51-7f2c0e9b4d10",
        "None",
    );
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
    assert_eq!(
        read_n(&mut s, 30),
        b"\0\0\0\x1a{\"Type\":\"Ack\",\"Chunks\":[]}".to_vec()
    );
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
    assert!(
        v["wire_bytes"].as_u64().unwrap() < (data.len() / 10) as u64,
        "{v}"
    );
    assert_eq!(std::fs::read(root.join("log.txt")).unwrap(), data);
    let out = t.join("out");
    let o = get(&addr, "log.txt", &out, &["--compress", "zstd", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["wire_bytes"].as_u64().unwrap() < (data.len() / 10) as u64,
        "{v}"
    );
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
        s.write_all(&chunk(i, &d[a..(a + 4096).min(d.len())]))
            .unwrap();
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

// ---------------------------------------------------------------------------------------------
// 1.1.0

/// Runs the cli.py-like sender; it closes without reading the reply unless `read_reply`.
fn v110_send(addr: &str, file: &Path, kind: &str, read_reply: bool) -> Output {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let mut c = Command::new(python());
    c.arg(interop("fastdp_v110_sender.py"))
        .args([host, port, file.to_str().unwrap(), kind]);
    if read_reply {
        c.arg("--read-reply");
    }
    let child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_output(child, RUN, "fastdp_v110_sender.py")
}

#[test]
fn f32_f33_f34_f35_f36_cli_py_sender_none_zstd_zip_targz_empty_and_1mib_multiple() {
    let t = TempDir::new("fdp-clipy");
    let root = t.join("share");
    let srv = serve(&root, &[]);
    let addr = srv.addr("fastdp");
    let src = t.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let text_data: Vec<u8> = b"FastDP 1.1.0 sends the whole file compressed.\n"
        .iter()
        .cycle()
        .take(300_000)
        .copied()
        .collect();
    let mut cases: Vec<(String, Vec<u8>, &str)> = Vec::new();
    for kind in ["None", "Zstd", "Zip", "TarGz"] {
        cases.push((format!("text-{kind}.txt"), text_data.clone(), kind));
        cases.push((format!("empty-{kind}.bin"), Vec::new(), kind));
        // An exact multiple of 1 MiB (and of the 256 KiB chunk when sent raw).
        cases.push((format!("mib-{kind}.bin"), pseudo_random(36, 2 << 20), kind));
    }
    for (name, data, kind) in &cases {
        let p = src.join(name);
        std::fs::write(&p, data).unwrap();
        // cli.py's habit: close right after the last chunk (F36).
        let o = v110_send(&addr, &p, kind, false);
        assert!(o.status.success(), "{name}: {}", text(&o));
        let dest = root.join(name);
        wait_for(Duration::from_secs(30), name, || {
            std::fs::read(&dest).is_ok_and(|d| d == *data)
        });
    }
    // The reply, when read: exactly the 27 bytes of success.
    let p = src.join("text-None.txt");
    let o = v110_send(&addr, &p, "None", true);
    assert_eq!(o.stdout, b"File received successfully.", "{}", text(&o));
    assert_eq!(
        std::fs::read(root.join("text-None-1.txt")).ok(),
        None,
        "same bytes: stored once"
    );
    // F32: the 101 ends with 1.1.0 and no FastDP header follows it.
    let mut s = upgraded(&addr, "1.1.0");
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut b = [0u8; 1];
    assert!(
        matches!(s.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
        "the server sent something after the 1.1.0 101"
    );
    // Every file is in the catalog: a pull gets it back.
    let out = t.join("out");
    let o = get(&addr, "mib-Zip.bin", &out, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::read(out.join("mib-Zip.bin")).unwrap(),
        pseudo_random(36, 2 << 20)
    );
    assert_eq!(visible(&root).len(), cases.len());
}

#[test]
fn f36_ferry_send_v1_into_the_test_1_1_0_server_every_form() {
    let t = TempDir::new("fdp-v1");
    let out = t.join("received");
    std::fs::create_dir_all(&out).unwrap();
    let mut child = Command::new(python())
        .arg(interop("fastdp_v110_server.py"))
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _guard = Kill(child);
    let addr = line
        .strip_prefix("listening fastdp-v110 ")
        .unwrap_or_else(|| panic!("test server said {line:?}"))
        .trim()
        .to_string();
    let data = pseudo_random(361, 3 << 20);
    for kind in ["None", "Zstd", "Zip", "TarGz"] {
        for (name, bytes) in [
            (format!("f-{kind}.bin"), data.clone()),
            (format!("e-{kind}.bin"), Vec::new()),
        ] {
            let p = t.join(&name);
            std::fs::write(&p, &bytes).unwrap();
            let o = run(
                &[
                    "fastdp",
                    "send",
                    "--v1",
                    "--compress",
                    kind,
                    "--addr",
                    &addr,
                    "--json",
                    p.to_str().unwrap(),
                ],
                &t.join("c"),
                RUN,
            );
            assert!(o.status.success(), "{name}: {}", text(&o));
            let v: Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(v["reply"], "File received successfully.");
            assert_eq!(std::fs::read(out.join(&name)).unwrap(), bytes, "{name}");
        }
    }
    // A 1.2.0-only server refuses the 1.1.0 handshake: a refusal, exit 4, no spinning.
    let root = t.join("share");
    let srv = serve(&root, &["--no-v110"]);
    let o = run(
        &[
            "fastdp",
            "send",
            "--v1",
            "--addr",
            &srv.addr("fastdp"),
            t.join("f-None.bin").to_str().unwrap(),
        ],
        &t.join("c"),
        RUN,
    );
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("426"),
        "{}",
        text(&o)
    );
}

// ---------------------------------------------------------------------------------------------
// Section 5, row by row (F39: after each, the server stores another upload)

/// Sends `bytes` on a fresh connection, closes the sending side, returns all the server said.
fn exchange(addr: &str, bytes: &[u8]) -> Vec<u8> {
    let mut s = connect(addr);
    s.write_all(bytes).unwrap();
    let _ = s.shutdown(Shutdown::Write);
    read_all(&mut s)
}

fn status_of(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn f3_f39_row_request_line_split_as_a_header_and_header_line_without_colon_get_400() {
    let t = TempDir::new("fdp-r1");
    let srv = serve(&t.join("share"), &[]);
    let addr = srv.addr("fastdp");
    // The README server's bug: the request line read as a header; ferry parses it as one.
    let ok = exchange(&addr, &request(&addr, "1.2.0"));
    assert!(ok.starts_with(b"HTTP/1.1 101 "), "{}", status_of(&ok));
    let bad = b"GET /fastdp-endpoint HTTP/1.1\r\nHost: x\r\nUpgrade fastdp\r\n\r\n";
    let r = exchange(&addr, bad);
    assert_eq!(
        r,
        b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n".to_vec()
    );
    // A partial head then EOF: the response is still complete.
    let r = exchange(&addr, b"GET /fastdp-endpoint HTTP/1.1\r\nHost: x\r\n");
    assert!(r.starts_with(b"HTTP/1.1 400 ") && r.ends_with(b"\r\n\r\n"));
    // Another path: 404; another method: 400.
    let r = exchange(
        &addr,
        &request(&addr, "1.2.0").replacen(b"/fastdp-endpoint".as_slice(), b"/x", 1),
    );
    assert_eq!(status_of(&r), "HTTP/1.1 404 Not Found");
    assert_serves(&addr, &t);
}

trait ReplaceBytes {
    fn replacen(&self, from: &[u8], to: &[u8], n: usize) -> Vec<u8>;
}

impl ReplaceBytes for Vec<u8> {
    fn replacen(&self, from: &[u8], to: &[u8], _n: usize) -> Vec<u8> {
        let i = self
            .windows(from.len())
            .position(|w| w == from)
            .expect("pattern present");
        [&self[..i], to, &self[i + from.len()..]].concat()
    }
}

#[test]
fn f4_f39_row_eof_instead_of_a_response_fails_the_client_at_once() {
    let t = TempDir::new("fdp-r2");
    // A server that accepts and closes; another that answers half a response.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for (i, c) in l.incoming().enumerate() {
            let Ok(mut c) = c else { break };
            let mut b = [0u8; 512];
            let _ = c.read(&mut b);
            if i % 2 == 1 {
                let _ = c.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: fast");
            }
        }
    });
    let p = t.join("x.bin");
    std::fs::write(&p, b"x").unwrap();
    let started = Instant::now();
    let o = send(&addr, &p, &t.join("c"), &["--retries", "1"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(started.elapsed() < Duration::from_secs(20), "no spinning");
    let o = run(
        &[
            "fastdp",
            "send",
            "--v1",
            "--addr",
            &addr,
            p.to_str().unwrap(),
        ],
        &t.join("c"),
        RUN,
    );
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    // And ferry's server always completes its response (previous test); it serves on.
    let srv = serve(&t.join("share"), &[]);
    assert_serves(&srv.addr("fastdp"), &t);
}

#[test]
fn f1_f39_row_lowercase_header_names_and_upgrade_fastdp_in_any_case_are_accepted() {
    let t = TempDir::new("fdp-r3");
    let srv = serve(&t.join("share"), &[]);
    let addr = srv.addr("fastdp");
    let req = format!("GET /fastdp-endpoint HTTP/1.1\r\nhost: {addr}\r\nUPGRADE: FastDP\r\nconnection: keep-alive, Upgrade\r\nsec-fastdp-key: unique-key-123\r\nsec-fastdp-version: 1.2.0\r\n\r\n");
    let r = exchange(&addr, req.as_bytes());
    assert_eq!(
        r,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: fastdp\r\nConnection: Upgrade\r\nSec-FastDP-Key: unique-key-123\r\nSec-FastDP-Version: 1.2.0\r\n\r\n".to_vec()
    );
    assert_serves(&addr, &t);
}

#[test]
fn f2_f3_f39_row_version_1_0_0_gets_426_each_time_and_a_header_before_the_101_is_kept() {
    let t = TempDir::new("fdp-r4");
    let srv = serve(&t.join("share"), &[]);
    let addr = srv.addr("fastdp");
    let want: &[u8] = b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: fastdp\r\nConnection: close\r\nSec-FastDP-Version: 1.2.0\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(want.len(), 115);
    for v in ["1.0.0", "1.0.0", "9.9.9"] {
        assert_eq!(exchange(&addr, &request(&addr, v)), want, "{v}");
    }
    let no_version = request(&addr, "1.2.0").replacen(b"Sec-FastDP-Version: 1.2.0\r\n", b"", 1);
    assert_eq!(exchange(&addr, &no_version), want);
    let no_upgrade = request(&addr, "1.2.0").replacen(b"Upgrade: fastdp\r\n", b"", 1);
    assert_eq!(exchange(&addr, &no_upgrade), want);
    // The header sent in the same write as the request: the start of the stream.
    let d = b"AAAA";
    let h = header("early.txt", d, 4096, &tid(4), "None");
    let mut bytes = request(&addr, "1.2.0");
    bytes.extend_from_slice(&jmsg(h.to_string().as_bytes()));
    bytes.extend_from_slice(&chunk(0, d));
    bytes.extend_from_slice(&FIN);
    let mut s = connect(&addr);
    s.write_all(&bytes).unwrap();
    let sw = switching("1.2.0");
    assert_eq!(read_n(&mut s, sw.len()), sw);
    assert_eq!(read_jmsg(&mut s)["Type"], "Header");
    let (_, done) = until_complete(&mut s);
    assert_eq!(done["FileName"], "early.txt");
    assert_serves(&addr, &t);
}

#[test]
fn f10_f39_row_duplicate_header_reads_as_a_chunk_and_gets_bad_chunk_before_its_payload() {
    let t = TempDir::new("fdp-r5");
    let root = t.join("share");
    let srv = serve(&root, &[]);
    let addr = srv.addr("fastdp");
    let d = pseudo_random(5, 10_000);
    let h = header("dup-header.bin", &d, 4096, &tid(5), "None");
    let (mut s, r) = open_push(&addr, &h);
    assert_eq!(r["Type"], "Header");
    // The README client sends its header twice: length prefix as chunk number, "{\"On" as length.
    s.write_all(&jmsg(h.to_string().as_bytes())).unwrap();
    let e = expect_error(&mut s, "bad-chunk");
    assert!(e["Message"].as_str().unwrap().contains("chunk"), "{e}");
    // 1.1.0: the same mistake gets its line.
    let mut s = upgraded(&addr, "1.1.0");
    let v = json!({"OneChunk": 4096, "FullChunk": 3, "FullSize": 10000, "DPVersion": "1.1.0", "CompressType": "None", "FileName": "x.bin", "Checksum": sha(&d)});
    s.write_all(&jmsg(v.to_string().as_bytes())).unwrap();
    s.write_all(&jmsg(v.to_string().as_bytes())).unwrap();
    assert_eq!(read_all(&mut s), b"ERROR: Malformed chunk header.".to_vec());
    assert!(!root.join("x.bin").exists());
    assert_serves(&addr, &t);
}

#[test]
fn f6_f33_f39_row_wrong_chunk_count_gets_bad_header() {
    let t = TempDir::new("fdp-r6");
    let srv = serve(&t.join("share"), &[]);
    let addr = srv.addr("fastdp");
    let d = pseudo_random(6, 8192);
    let mut h = header("count.bin", &d, 4096, &tid(6), "None");
    h["FullChunk"] = json!(3); // the README's floor+1 for an exact multiple
    let (mut s, r) = open_push(&addr, &h);
    assert_eq!(r["Code"], "bad-header", "{r}");
    assert!(read_all(&mut s).is_empty());
    let mut s = upgraded(&addr, "1.1.0");
    let v = json!({"OneChunk": 4096, "FullChunk": 3, "FullSize": 8192, "DPVersion": "1.1.0", "CompressType": "None", "FileName": "x.bin", "Checksum": sha(&d)});
    s.write_all(&jmsg(v.to_string().as_bytes())).unwrap();
    assert_eq!(read_all(&mut s), b"ERROR: Bad header.".to_vec());
    assert_serves(&addr, &t);
}

#[test]
fn f10_f11_f39_row_oversize_payload_lengths_get_bad_chunk_before_reading() {
    let t = TempDir::new("fdp-r7");
    let srv = serve(&t.join("share"), &[]);
    let addr = srv.addr("fastdp");
    let d = pseudo_random(7, 10_000);
    let cases: [(&str, u32, &str); 3] = [
        ("None", 2_000_000_000, "2 GB claim"),
        ("None", 4097, "not len(i) with None"),
        // bound(4096) = 4096 + 16 + (131072 - 4096) / 2048 = 4174.
        ("Zstd", 4175, "over bound(len(i)) with Zstd"),
    ];
    for (i, (compress, len, what)) in cases.iter().enumerate() {
        let h = header("big.bin", &d, 4096, &tid(70 + i as u64), compress);
        let (mut s, r) = open_push(&addr, &h);
        assert_eq!(r["Type"], "Header", "{what}");
        let mut frame = 0u32.to_be_bytes().to_vec();
        frame.extend_from_slice(&len.to_be_bytes());
        // No payload follows: the error must come from the 8 header bytes alone.
        s.write_all(&frame).unwrap();
        let e = expect_error(&mut s, "bad-chunk");
        assert_eq!(e["Chunk"], 0, "{what}: {e}");
    }
    assert_serves(&addr, &t);
}

#[test]
fn f9_f10_f33_f39_row_one_based_numbers_and_numbers_past_the_end_get_bad_chunk() {
    let t = TempDir::new("fdp-r8");
    let srv = serve(&t.join("share"), &[]);
    let addr = srv.addr("fastdp");
    let d = pseudo_random(8, 8192);
    for (i, n) in [2u32, 7, 0xFFFF_FFFD].into_iter().enumerate() {
        let h = header("n.bin", &d, 4096, &tid(80 + i as u64), "None");
        let (mut s, _) = open_push(&addr, &h);
        s.write_all(&chunk(n, &d[..4096])).unwrap();
        expect_error(&mut s, "bad-chunk");
    }
    // 1.1.0: chunks out of order.
    let mut s = upgraded(&addr, "1.1.0");
    let v = json!({"OneChunk": 4096, "FullChunk": 2, "FullSize": 8192, "DPVersion": "1.1.0", "CompressType": "None", "FileName": "o.bin", "Checksum": sha(&d)});
    s.write_all(&jmsg(v.to_string().as_bytes())).unwrap();
    s.write_all(&chunk(1, &d[4096..])).unwrap();
    assert_eq!(read_all(&mut s), b"ERROR: Malformed chunk header.".to_vec());
    assert_serves(&addr, &t);
}

#[test]
fn f5_f6_f39_row_headers_that_are_not_json_objects_get_bad_header() {
    let t = TempDir::new("fdp-r9");
    let srv = serve(&t.join("share"), &[]);
    let addr = srv.addr("fastdp");
    let d = b"AAAA";
    let good = header("h.txt", d, 4096, &tid(9), "None");
    let with = |k: &str, v: Value| {
        let mut h = good.clone();
        h[k] = v;
        jmsg(h.to_string().as_bytes())
    };
    let without = |k: &str| {
        let mut h = good.clone();
        h.as_object_mut().unwrap().remove(k);
        jmsg(h.to_string().as_bytes())
    };
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("not UTF-8", jmsg(b"{\"OneChunk\":\xff}")),
        ("an array", jmsg(b"[1,2,3]")),
        ("L = 0", vec![0, 0, 0, 0]),
        ("L > 65,536", vec![0, 1, 0, 1]),
        ("missing field", without("Checksum")),
        ("string for an integer", with("FullSize", json!("4"))),
        ("negative", with("FullSize", json!(-4))),
        ("fractional", with("OneChunk", json!(4096.5))),
        (
            "over 2^53-1",
            with("FullSize", json!(9_007_199_254_740_992u64)),
        ),
        ("OneChunk under 4096", with("OneChunk", json!(1024))),
        ("unknown Mode", with("Mode", json!("Sideways"))),
    ];
    for (what, b) in bodies {
        let mut s = upgraded(&addr, "1.2.0");
        s.write_all(&b).unwrap();
        // An oversized body is never read: the error comes before any of it is sent.
        let e = expect_error(&mut s, "bad-header");
        assert!(!e["Message"].as_str().unwrap_or("").is_empty(), "{what}");
    }
    // F5: unknown keys are ignored.
    let mut h = good.clone();
    h["SomethingNew"] = json!({"nested": [1, 2]});
    let (mut s, r) = open_push(&addr, &h);
    assert_eq!(r["Type"], "Header", "{r}");
    s.write_all(&chunk(0, d)).unwrap();
    s.write_all(&FIN).unwrap();
    until_complete(&mut s);
    assert_serves(&addr, &t);
}

#[test]
fn f28_f39_row_path_traversal_file_names_get_bad_filename_and_nothing_is_written() {
    let t = TempDir::new("fdp-r10");
    let root = t.join("share");
    let srv = serve(&root, &[]);
    let addr = srv.addr("fastdp");
    let long = "x".repeat(256);
    let names = [
        "../x", "/x", "a/b", "..\\x", "", ".", "..", "a\u{0}b", "a\u{1}b", "a\u{7f}", "a\u{85}",
        &long, ".ferry", ".FERRY",
    ];
    for (i, n) in names.iter().enumerate() {
        let (mut s, r) = open_push(
            &addr,
            &header(n, b"AAAA", 4096, &tid(100 + i as u64), "None"),
        );
        assert_eq!(r["Code"], "bad-filename", "{n:?}: {r}");
        assert!(read_all(&mut s).is_empty());
        let mut s = upgraded(&addr, "1.1.0");
        let v = json!({"OneChunk": 4096, "FullChunk": 1, "FullSize": 4, "DPVersion": "1.1.0", "CompressType": "None", "FileName": n, "Checksum": sha(b"AAAA")});
        s.write_all(&jmsg(v.to_string().as_bytes())).unwrap();
        s.write_all(&chunk(0, b"AAAA")).unwrap();
        assert_eq!(read_all(&mut s), b"ERROR: Bad file name.".to_vec(), "{n:?}");
    }
    assert!(visible(&root).is_empty());
    assert!(!t.join("x").exists() && !Path::new("/x").exists());
    assert_serves(&addr, &t);
}

/// A zstd frame with its content size in 8 bytes (FCS flag 3) around `blocks`.
fn zstd_frame(content_size: u64, window_byte: Option<u8>, blocks: &[u8]) -> Vec<u8> {
    let mut f = vec![0x28, 0xb5, 0x2f, 0xfd];
    match window_byte {
        // Single segment: the window is the content size.
        None => {
            f.push(0b1110_0000);
            f.extend_from_slice(&content_size.to_le_bytes());
        }
        Some(w) => {
            f.push(0b1100_0000);
            f.push(w);
            f.extend_from_slice(&content_size.to_le_bytes());
        }
    }
    f.extend_from_slice(blocks);
    f
}

/// One last RLE block of `n` bytes of `b`.
fn rle_block(n: u32, b: u8) -> Vec<u8> {
    let h = (n << 3) | (1 << 1) | 1;
    vec![h as u8, (h >> 8) as u8, (h >> 16) as u8, b]
}

#[test]
fn f11_f39_row_zstd_bombs_and_bad_frames_get_bad_chunk() {
    let t = TempDir::new("fdp-r11");
    let root = t.join("share");
    let srv = serve(&root, &[]);
    let addr = srv.addr("fastdp");
    let d = vec![b'A'; 4096];
    let good = zstd_frame(4096, None, &rle_block(4096, b'A'));
    let mut two = good.clone();
    two.extend_from_slice(&good);
    let mut trailing = good.clone();
    trailing.push(0);
    let no_size = {
        let mut f = vec![0x28, 0xb5, 0x2f, 0xfd, 0b0000_0000, 0x48];
        f.extend_from_slice(&rle_block(4096, b'A'));
        f
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "expands past len(i)",
            zstd_frame(4096, None, &rle_block(100_000, b'A')),
        ),
        ("no content size", no_size),
        (
            "content size differs",
            zstd_frame(4000, None, &rle_block(4000, b'A')),
        ),
        (
            "window over 8 MiB",
            zstd_frame(4096, Some(0x78), &rle_block(4096, b'A')),
        ),
        ("two frames", two),
        ("trailing bytes", trailing),
    ];
    for (i, (what, payload)) in cases.iter().enumerate() {
        let h = header("bomb.bin", &d, 4096, &tid(110 + i as u64), "Zstd");
        let (mut s, _) = open_push(&addr, &h);
        s.write_all(&chunk(0, payload)).unwrap();
        expect_error(&mut s, "bad-chunk");
        let _ = what;
    }
    // The good frame is accepted.
    let h = header("ok.bin", &d, 4096, &tid(119), "Zstd");
    let (mut s, _) = open_push(&addr, &h);
    s.write_all(&chunk(0, &good)).unwrap();
    s.write_all(&FIN).unwrap();
    until_complete(&mut s);
    assert_eq!(visible(&root), ["ok.bin"]);
    assert_serves(&addr, &t);
}

#[test]
fn f34_f35_f39_row_1_1_0_output_over_the_limit_and_bad_zips_fail_decompression() {
    let t = TempDir::new("fdp-r12");
    let root = t.join("share");
    let srv = serve(&root, &["--max-file-size", "100000"]);
    let addr = srv.addr("fastdp");
    let py = |code: &str| -> Vec<u8> {
        let o = Command::new(python()).args(["-c", code]).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        o.stdout
    };
    let bomb = py("import sys,zstandard; sys.stdout.buffer.write(zstandard.ZstdCompressor().compress(b'A'*1000000))");
    let empty_zip = py("import io,sys,zipfile\nb=io.BytesIO()\nzipfile.ZipFile(b,'w').close()\nsys.stdout.buffer.write(b.getvalue())");
    let two_zip = py("import io,sys,zipfile\nb=io.BytesIO()\nz=zipfile.ZipFile(b,'w')\nz.writestr('a','1')\nz.writestr('b','2')\nz.close()\nsys.stdout.buffer.write(b.getvalue())");
    let bzip = py("import io,sys,zipfile\nb=io.BytesIO()\nz=zipfile.ZipFile(b,'w',zipfile.ZIP_BZIP2)\nz.writestr('a','hello'*10)\nz.close()\nsys.stdout.buffer.write(b.getvalue())");
    let mut encrypted = py("import io,sys,zipfile\nb=io.BytesIO()\nz=zipfile.ZipFile(b,'w')\nz.writestr('a','hello')\nz.close()\nsys.stdout.buffer.write(b.getvalue())");
    encrypted[6] |= 1; // the local header's "encrypted" flag
    for (i, (kind, data)) in [
        ("Zstd", bomb),
        ("Zip", empty_zip),
        ("Zip", two_zip),
        ("Zip", bzip),
        ("Zip", encrypted),
    ]
    .into_iter()
    .enumerate()
    {
        let mut s = upgraded(&addr, "1.1.0");
        let v = json!({"OneChunk": 262144, "FullChunk": (data.len() as u64).div_ceil(262144), "FullSize": data.len(), "DPVersion": "1.1.0", "CompressType": kind, "FileName": format!("d{i}.bin"), "Checksum": sha(&data)});
        s.write_all(&jmsg(v.to_string().as_bytes())).unwrap();
        for (n, c) in data.chunks(262144).enumerate() {
            s.write_all(&chunk(n as u32, c)).unwrap();
        }
        assert_eq!(
            read_all(&mut s),
            b"ERROR: Decompression failed.".to_vec(),
            "case {i}"
        );
    }
    // A checksum that does not match: its line, nothing stored.
    let mut s = upgraded(&addr, "1.1.0");
    let v = json!({"OneChunk": 4096, "FullChunk": 1, "FullSize": 4, "DPVersion": "1.1.0", "CompressType": "None", "FileName": "c.bin", "Checksum": sha(b"BBBB")});
    s.write_all(&jmsg(v.to_string().as_bytes())).unwrap();
    s.write_all(&chunk(0, b"AAAA")).unwrap();
    assert_eq!(read_all(&mut s), b"ERROR: Checksum mismatch.".to_vec());
    assert!(visible(&root).is_empty(), "{:?}", visible(&root));
    // Temporaries are unnamed: nothing is left in the ingest area.
    let left: Vec<_> = std::fs::read_dir(work_dir(&root))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_serves(&addr, &t);
}

#[test]
fn f8_f15_f39_row_zip_targz_or_unknown_compression_in_1_2_0_is_unsupported() {
    let t = TempDir::new("fdp-r13");
    let srv = serve(&t.join("share"), &[]);
    let addr = srv.addr("fastdp");
    for (i, c) in ["Zip", "TarGz", "Brotli"].iter().enumerate() {
        let (mut s, r) = open_push(
            &addr,
            &header("c.bin", b"AAAA", 4096, &tid(130 + i as u64), c),
        );
        assert_eq!(r["Code"], "unsupported-compression", "{c}: {r}");
        assert!(read_all(&mut s).is_empty());
    }
    assert_serves(&addr, &t);
}

#[test]
fn f21_f39_row_fewer_chunks_then_eof_keeps_1_2_0_state_and_drops_1_1_0_temporaries() {
    let t = TempDir::new("fdp-r14");
    let root = t.join("share");
    let srv = serve(&root, &[]);
    let addr = srv.addr("fastdp");
    let d = pseudo_random(14, 3 * 4096);
    let h = header("part.bin", &d, 4096, &tid(14), "None");
    let (mut s, _) = open_push(&addr, &h);
    s.write_all(&chunk(0, &d[..4096])).unwrap();
    s.write_all(&chunk(1, &d[4096..6000])).unwrap(); // cut off mid-payload
    let _ = s.shutdown(Shutdown::Write);
    let _ = read_all(&mut s);
    // Reconnect: chunk 0 is held (durable before the close was answered), chunk 1 is not.
    let (mut s, r) = open_push(&addr, &h);
    assert_eq!(r["Have"], json!([[0, 1]]), "{r}");
    s.write_all(&chunk(1, &d[4096..8192])).unwrap();
    s.write_all(&chunk(2, &d[8192..])).unwrap();
    s.write_all(&FIN).unwrap();
    until_complete(&mut s);
    assert_eq!(std::fs::read(root.join("part.bin")).unwrap(), d);
    // 1.1.0 cut short: its line, nothing kept.
    let mut s = upgraded(&addr, "1.1.0");
    let v = json!({"OneChunk": 4096, "FullChunk": 3, "FullSize": d.len(), "DPVersion": "1.1.0", "CompressType": "Zip", "FileName": "short.bin", "Checksum": sha(&d)});
    s.write_all(&jmsg(v.to_string().as_bytes())).unwrap();
    s.write_all(&chunk(0, &d[..4096])).unwrap();
    let _ = s.shutdown(Shutdown::Write);
    assert_eq!(read_all(&mut s), b"ERROR: Incomplete chunk data.".to_vec());
    assert!(!root.join("short.bin").exists());
    assert_serves(&addr, &t);
}

#[test]
fn f31_f39_row_unframed_text_where_a_jmsg_is_expected_is_a_protocol_error_and_retried() {
    let t = TempDir::new("fdp-r15");
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let hits = Arc::new(AtomicU64::new(0));
    let h2 = hits.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { break };
            h2.fetch_add(1, Ordering::SeqCst);
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let key = String::from_utf8_lossy(&got)
                .lines()
                .find_map(|l| l.strip_prefix("Sec-FastDP-Key: ").map(str::to_owned))
                .unwrap_or_default();
            let _ = c.write_all(format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: fastdp\r\nConnection: Upgrade\r\nSec-FastDP-Key: {key}\r\nSec-FastDP-Version: 1.2.0\r\n\r\nRECONNECT").as_bytes());
        }
    });
    let p = t.join("r.bin");
    std::fs::write(&p, b"data").unwrap();
    let o = send(&addr, &p, &t.join("c"), &["--retries", "1", "-v"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(hits.load(Ordering::SeqCst) >= 2, "retried");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("65536"),
        "{}",
        text(&o)
    );
    let srv = serve(&t.join("share"), &[]);
    assert_serves(&srv.addr("fastdp"), &t);
}

#[test]
fn f16_f17_f39_row_other_parameters_and_a_ninth_connection_are_refused() {
    let t = TempDir::new("fdp-r16");
    let root = t.join("share");
    let srv = serve(&root, &[]);
    let addr = srv.addr("fastdp");
    let d = pseudo_random(16, 64 * 4096);
    let h = header("eight.bin", &d, 4096, &tid(16), "None");
    let mut held = Vec::new();
    for _ in 0..8 {
        let (s, r) = open_push(&addr, &h);
        assert_eq!(r["Type"], "Header", "{r}");
        assert_eq!(r["MaxConnections"], 8);
        held.push(s);
    }
    let (mut s, r) = open_push(&addr, &h);
    assert_eq!(r["Code"], "too-many-connections", "{r}");
    assert!(read_all(&mut s).is_empty());
    // F17: the same TransferId with another FileName.
    let mut other = h.clone();
    other["FileName"] = json!("nine.bin");
    let (_, r) = open_push(&addr, &other);
    assert_eq!(r["Code"], "parameter-mismatch", "{r}");
    // F16: the eight connections fill one part, each a share of the chunks.
    for (k, s) in held.iter_mut().enumerate() {
        for i in (k..64).step_by(8) {
            s.write_all(&chunk(i as u32, &d[i * 4096..(i + 1) * 4096]))
                .unwrap();
        }
    }
    for s in held.iter_mut() {
        s.write_all(&FIN).unwrap();
    }
    // Each connection gets Acks, then Complete, or (its FIN answered before the last chunk
    // arrived elsewhere) only Acks and the close.
    let mut completes = 0;
    for s in held.iter_mut() {
        let rest = read_all(s);
        let mut at = 0;
        while at + 4 <= rest.len() {
            let n = u32::from_be_bytes(rest[at..at + 4].try_into().unwrap()) as usize;
            let m: Value = serde_json::from_slice(&rest[at + 4..at + 4 + n]).unwrap();
            match m["Type"].as_str() {
                Some("Complete") => completes += 1,
                Some("Ack") => {}
                _ => panic!("unexpected {m}"),
            }
            at += 4 + n;
        }
        assert_eq!(at, rest.len());
    }
    assert!(completes >= 1);
    assert_eq!(std::fs::read(root.join("eight.bin")).unwrap(), d);
    assert_serves(&addr, &t);
}

#[test]
fn f25_f39_row_a_1_tib_file_is_too_large_and_one_over_the_free_space_no_space() {
    let t = TempDir::new("fdp-r17");
    let root = t.join("share");
    let srv = serve(&root, &["--max-file-size", &(2u64 << 40).to_string()]);
    let addr = srv.addr("fastdp");
    let mut h = header("huge.bin", b"", 4_194_304, &tid(17), "None");
    h["FullSize"] = json!(1u64 << 40);
    h["FullChunk"] = json!((1u64 << 40) / 4_194_304);
    let mut small = h.clone();
    // Over the free space (2 TiB is allowed by the limit, not by any test disk).
    small["FullSize"] = json!(2u64 << 40);
    small["FullChunk"] = json!((2u64 << 40) / 4_194_304);
    small["TransferId"] = json!(tid(171));
    let (_, r) = open_push(&addr, &small);
    assert_eq!(r["Code"], "no-space", "{r}");
    drop(srv);
    let srv = serve(&root, &[]);
    let addr = srv.addr("fastdp");
    let (_, r) = open_push(&addr, &h);
    assert_eq!(r["Code"], "too-large", "{r}");
    // Nothing was allocated.
    let left: Vec<_> = std::fs::read_dir(work_dir(&root))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_serves(&addr, &t);
}

/// Bytes `path` has allocated on disk.
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// A push header for `size` bytes of nothing in particular (the bytes never come).
fn declared(size: u64, n: u64) -> Value {
    let one_chunk = 4u64 << 20;
    json!({
        "OneChunk": one_chunk,
        "FullChunk": size.div_ceil(one_chunk),
        "FullSize": size,
        "DPVersion": "1.2.0",
        "CompressType": "None",
        "FileName": format!("declared-{n}.bin"),
        "TransferId": tid(0x5e_0000 + n),
        "Checksum": format!("sha256:{}", sha(b"never sent")),
    })
}

/// Issue 15 item 5 (which wins over F26's full preallocation): a 27-byte header reserves one
/// step (64 MiB) of a 4 GiB FullSize, not the whole of it, and one address may hold at most
/// `--max-peer-reserve` of such space over its transfers; a transfer that goes gives it back.
#[test]
fn f26_issue15_a_header_takes_one_step_of_space_and_one_address_at_most_its_cap() {
    const STEP: u64 = 64 << 20;
    let t = TempDir::new("fdp-steps");
    let root = t.join("share");
    let cap = (3 * STEP + (1 << 20)).to_string();
    let srv = serve(&root, &["--max-peer-reserve", &cap]);
    let addr = srv.addr("fastdp");
    let size = 4u64 << 30;
    let mut open = Vec::new();
    for n in 0..3 {
        let (s, r) = open_push(&addr, &declared(size, n));
        assert_eq!(r["Type"], "Header", "transfer {n}: {r}");
        let part = work_dir(&root).join(format!("{}.part", tid(0x5e_0000 + n)));
        assert_eq!(std::fs::metadata(&part).unwrap().len(), size);
        let a = allocated(&part);
        assert!(
            a <= STEP + (1 << 20),
            "transfer {n}: {a} bytes allocated for a header, more than one step"
        );
        open.push(s);
    }
    // A fourth transfer from the same address would hold more than the cap.
    let (mut s, r) = open_push(&addr, &declared(size, 3));
    assert_eq!(r["Code"], "no-space", "{r}");
    assert!(read_all(&mut s).is_empty());
    // The first one's peer goes: its transfer closes and gives its step back.
    drop(open.remove(0));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, r) = open_push(&addr, &declared(size, 4));
        if r["Type"] == "Header" {
            drop(s);
            break;
        }
        assert_eq!(r["Code"], "no-space", "{r}");
        assert!(
            Instant::now() < deadline,
            "the closed transfer's space never came back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn f29_f39_row_a_silent_peer_and_a_trickling_peer_get_timeout() {
    let t = TempDir::new("fdp-r18");
    let srv = serve(
        &t.join("share"),
        &["--idle-timeout", "2", "--frame-timeout", "2"],
    );
    let addr = srv.addr("fastdp");
    let d = pseudo_random(18, 100_000);
    let (mut s, _) = open_push(&addr, &header("quiet.bin", &d, 65536, &tid(18), "None"));
    let started = Instant::now();
    expect_error(&mut s, "timeout");
    assert!(started.elapsed() >= Duration::from_millis(1900));
    // One byte every 200 ms inside a frame: under 64 KiB per window.
    let (mut s, _) = open_push(&addr, &header("slow.bin", &d, 65536, &tid(181), "None"));
    s.write_all(
        &chunk(0, &[])[..8]
            .iter()
            .copied()
            .chain([0u8; 0])
            .collect::<Vec<u8>>()[..4],
    )
    .unwrap();
    s.write_all(&65536u32.to_be_bytes()).unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    while started.elapsed() < Duration::from_secs(10) {
        if s.write_all(&[0]).is_err() {
            break;
        }
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut b = [0u8; 256];
        match s.read(&mut b) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(_) => {}
        }
        if got.len() > 4 {
            break;
        }
    }
    assert!(
        String::from_utf8_lossy(&got).contains("\"timeout\""),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // The 1.1.0 line for a silent sender.
    let mut s = upgraded(&addr, "1.1.0");
    let v = json!({"OneChunk": 4096, "FullChunk": 1, "FullSize": 4, "DPVersion": "1.1.0", "CompressType": "None", "FileName": "q.bin", "Checksum": sha(b"AAAA")});
    s.write_all(&jmsg(v.to_string().as_bytes())).unwrap();
    assert_eq!(read_all(&mut s), b"ERROR: Timeout.".to_vec());
    assert_serves(&addr, &t);
}

// ---------------------------------------------------------------------------------------------
// Faults, resume, recycling, memory

fn spawn_send(addr: &str, file: &Path, cache: &Path, extra: &[&str]) -> Child {
    Command::new(FERRY)
        .args(["fastdp", "send", "--addr", addr, file.to_str().unwrap()])
        .args(extra)
        .env("XDG_CACHE_HOME", cache)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Kills a child with SIGKILL and reaps it.
fn sigkill(c: &mut Child) {
    let _ = c.kill();
    let _ = c.wait();
}

#[test]
fn f21_sender_sigkilled_mid_transfer_and_rerun_sends_only_the_missing_chunks() {
    let t = TempDir::new("fdp-kill-sender");
    let root = t.join("share");
    let srv = serve(&root, &[]);
    let size = 16usize << 20;
    let p = t.join("big.bin");
    std::fs::write(&p, pseudo_random(21, size)).unwrap();
    let cache = t.join("cache");
    let relay = Relay::start(&srv.addr("fastdp"), Some(Duration::from_millis(3)), None);
    let mut child = spawn_send(&relay.addr, &p, &cache, &["--parallel", "2"]);
    wait_for(Duration::from_secs(60), "half the file on the wire", || {
        relay.bytes() >= size as u64 / 2
    });
    sigkill(&mut child);
    let first = settled(&relay.c2s);
    // The server sees the connection end and keeps what it received.
    wait_for(
        Duration::from_secs(30),
        "the server's durable chunks",
        || durable_bits(&work_dir(&root)) >= 4,
    );
    // The same command again (same address: the relay, no longer slow) finds the TransferId
    // in its resume record and sends what the server lacks.
    relay.throttle_us.store(0, Ordering::SeqCst);
    let v = send_ok(&relay.addr, &p, &cache, &["--parallel", "2"]);
    let second = relay.bytes() - first;
    let held = v["chunks_held"].as_u64().unwrap();
    assert!(held >= 4, "{v}");
    // Only the missing 1 MiB chunks went out again (plus handshakes and headers).
    let missing = (16 - held) << 20;
    assert!(
        second <= missing + 65_536,
        "rerun sent {second} bytes for {missing} missing (first run {first})"
    );
    assert_eq!(
        v["hash_seconds"], 0.0,
        "the rerun reused the recorded SHA-256"
    );
    assert_eq!(sha256_file(&root.join("big.bin")), sha256_file(&p));
}

#[test]
fn f22_f31_server_sigkilled_mid_transfer_restarts_and_the_client_resumes_from_have() {
    let t = TempDir::new("fdp-kill-server");
    let root = t.join("share");
    let mut srv = serve(&root, &[]);
    let size = 16usize << 20;
    let p = t.join("big.bin");
    std::fs::write(&p, pseudo_random(22, size)).unwrap();
    let relay = Relay::start(&srv.addr("fastdp"), Some(Duration::from_millis(3)), None);
    let child = spawn_send(
        &relay.addr,
        &p,
        &t.join("cache"),
        &["--parallel", "2", "-v", "--json"],
    );
    wait_for(Duration::from_secs(60), "half the file on the wire", || {
        relay.bytes() >= size as u64 / 2
    });
    // ... and some of it acknowledged, so durable (a bit set in the part's bitmap).
    wait_for(Duration::from_secs(60), "a durable chunk", || {
        durable_bits(&work_dir(&root)) > 0
    });
    let _ = srv.child.kill();
    let _ = srv.child.wait();
    // The restarted server reloads the transfer's state.
    let srv2 = serve(&root, &[]);
    *relay.up.lock().unwrap() = srv2.addr("fastdp");
    let o = wait_output(child, RUN, "ferry fastdp send");
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["retries"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(sha256_file(&root.join("big.bin")), sha256_file(&p));
    let log = srv2.stderr_text();
    let held = log
        .lines()
        .find_map(|l| {
            let rest = l.split("bytes, ").nth(1)?;
            rest.split(" of ").next()?.parse::<u64>().ok()
        })
        .unwrap_or_else(|| panic!("no push line in the restarted server's log:\n{log}"));
    assert!(held > 0, "the restarted server held nothing:\n{log}");
}

#[test]
fn f14_a_chunk_corrupted_on_the_wire_is_repaired_by_its_crc() {
    let t = TempDir::new("fdp-crc");
    let root = t.join("share");
    let srv = serve(&root, &[]);
    let p = t.join("c.bin");
    let data = pseudo_random(14, 4 << 20);
    std::fs::write(&p, &data).unwrap();
    // Offset 100,000 of the first connection is inside chunk 0's payload (256 KiB chunks).
    let relay = Relay::start(&srv.addr("fastdp"), None, Some(100_000));
    let o = send(
        &relay.addr,
        &p,
        &t.join("cache"),
        &["--parallel", "1", "-v"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("chunk 0 acknowledged with CRC"), "{err}");
    assert_eq!(std::fs::read(root.join("c.bin")).unwrap(), data);
}

#[test]
fn f19_a_whole_file_checksum_mismatch_deletes_the_transfer_and_leaves_nothing() {
    let t = TempDir::new("fdp-sha");
    let root = t.join("share");
    let srv = serve(&root, &[]);
    let addr = srv.addr("fastdp");
    let d = pseudo_random(19, 8192);
    let mut h = header("wrong.bin", &d, 4096, &tid(19), "None");
    h["Checksum"] = json!(format!("sha256:{}", sha(b"something else")));
    let (mut s, _) = open_push(&addr, &h);
    s.write_all(&chunk(0, &d[..4096])).unwrap();
    s.write_all(&chunk(1, &d[4096..])).unwrap();
    s.write_all(&FIN).unwrap();
    loop {
        let m = read_jmsg(&mut s);
        if m["Type"] == "Error" {
            assert_eq!(m["Code"], "checksum-mismatch");
            break;
        }
        assert_eq!(m["Type"], "Ack", "{m}");
    }
    assert!(read_all(&mut s).is_empty());
    assert!(visible(&root).is_empty());
    let left: Vec<_> = std::fs::read_dir(work_dir(&root))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // The same TransferId again starts from nothing.
    let (_, r) = open_push(&addr, &h);
    assert_eq!(r["Have"], json!([]), "{r}");
}

#[test]
fn f23_connections_recycle_after_reconnect_bytes_without_losing_data() {
    let t = TempDir::new("fdp-recycle");
    let root = t.join("share");
    let srv = serve(&root, &[]);
    let relay = Relay::start(&srv.addr("fastdp"), None, None);
    let p = t.join("r.bin");
    let data = pseudo_random(23, 6 << 20);
    std::fs::write(&p, &data).unwrap();
    let v = send_ok(
        &relay.addr,
        &p,
        &t.join("c"),
        &["--parallel", "2", "--reconnect-bytes", "1000000"],
    );
    assert_eq!(v["retries"], 0, "{v}");
    assert!(
        relay.conns.load(Ordering::SeqCst) >= 6,
        "recycled connections"
    );
    assert_eq!(std::fs::read(root.join("r.bin")).unwrap(), data);
}

#[test]
fn f38_pull_over_several_connections_resumes_after_a_kill_and_restarts_on_a_changed_file() {
    let t = TempDir::new("fdp-pull");
    let root = t.join("share");
    std::fs::create_dir_all(&root).unwrap();
    let size = 16usize << 20;
    std::fs::write(root.join("p.bin"), pseudo_random(38, size)).unwrap();
    let srv = serve(&root, &[]);
    let out = t.join("out");
    let relay = Relay::start(&srv.addr("fastdp"), Some(Duration::from_millis(3)), None);
    let mut child = Command::new(FERRY)
        .args([
            "fastdp",
            "get",
            "--addr",
            &relay.addr,
            "--out",
            out.to_str().unwrap(),
            "--parallel",
            "3",
            "p.bin",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(60), "half the file downloaded", || {
        relay.s2c.load(Ordering::SeqCst) >= size as u64 / 2
    });
    // ... and acknowledged, so durable in the client's part.
    wait_for(
        Duration::from_secs(60),
        "the client's durable chunks",
        || durable_bits(&out.join(".ferry/fastdp")) >= 4,
    );
    assert!(
        relay.conns.load(Ordering::SeqCst) >= 3,
        "several connections"
    );
    sigkill(&mut child);
    let first = settled(&relay.s2c);
    assert!(
        !out.join("p.bin").exists(),
        "nothing visible before verification"
    );
    relay.throttle_us.store(0, Ordering::SeqCst);
    let o = get(&relay.addr, "p.bin", &out, &["--parallel", "3", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["chunks_held"].as_u64().unwrap() >= 4, "{v}");
    // Only what the client lacked came again (1 MiB chunks, plus handshakes and messages).
    let second = relay.s2c.load(Ordering::SeqCst) - first;
    let missing = (16 - v["chunks_held"].as_u64().unwrap()) << 20;
    assert!(
        second <= missing + 65_536,
        "rerun received {second} bytes for {missing} missing"
    );
    assert_eq!(
        sha256_file(&out.join("p.bin")),
        sha256_file(&root.join("p.bin"))
    );
    // A partial download of a file that then changes on the server: parameter-mismatch, and
    // the client starts over with a new TransferId.
    std::fs::write(root.join("q.bin"), pseudo_random(381, size)).unwrap();
    wait_for(Duration::from_secs(10), "q.bin served", || {
        let o = get(&srv.addr("fastdp"), "q.bin", &t.join("probe"), &[]);
        o.status.success()
    });
    let out2 = t.join("out2");
    let relay = Relay::start(&srv.addr("fastdp"), Some(Duration::from_millis(3)), None);
    let mut child = Command::new(FERRY)
        .args([
            "fastdp",
            "get",
            "--addr",
            &relay.addr,
            "--out",
            out2.to_str().unwrap(),
            "q.bin",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(60), "a third downloaded", || {
        relay.s2c.load(Ordering::SeqCst) >= size as u64 / 3
    });
    wait_for(
        Duration::from_secs(60),
        "the client's durable chunks",
        || durable_bits(&out2.join(".ferry/fastdp")) >= 1,
    );
    sigkill(&mut child);
    let new = pseudo_random(382, size / 2);
    let tmp = root.join(".q.tmp");
    std::fs::write(&tmp, &new).unwrap();
    std::fs::rename(&tmp, root.join("q.bin")).unwrap();
    let want = hex(&Sha256::digest(&new));
    wait_for(Duration::from_secs(10), "the new q.bin served", || {
        let o = get(&srv.addr("fastdp"), &want, &t.join("probe2"), &[]);
        o.status.success()
    });
    relay.throttle_us.store(0, Ordering::SeqCst);
    let o = get(&relay.addr, "q.bin", &out2, &["-v"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(out2.join("q.bin")).unwrap(), new);
    assert!(
        srv.stderr_text().contains("parameter-mismatch"),
        "{}",
        srv.stderr_text()
    );
}

/// RssAnon of a process in KiB.
fn rss_anon(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Samples the RssAnon of the server and of `child` until the child exits (peaks in KiB).
fn watch_rss(mut child: Child, server: u32, peak: &mut (u64, u64)) -> std::process::ExitStatus {
    let pid = child.id();
    let deadline = Instant::now() + RUN;
    while child.try_wait().unwrap().is_none() {
        peak.0 = peak.0.max(rss_anon(server).unwrap_or(0));
        peak.1 = peak.1.max(rss_anon(pid).unwrap_or(0));
        if Instant::now() > deadline {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.wait().unwrap()
}

#[test]
fn f40_eight_connections_push_and_pull_none_and_zstd_keep_rss_anon_under_64_mib() {
    let t = TempDir::new("fdp-rss");
    let root = t.join("share");
    let srv = serve(&root, &[]);
    let addr = srv.addr("fastdp");
    let server_pid = srv.child.id();
    let size = 64usize << 20;
    let p = t.join("m.bin");
    // Half random, half text: zstd has work to do on both kinds.
    let mut data = pseudo_random(40, size / 2);
    data.extend(
        b"a line of text, again and again\n"
            .iter()
            .cycle()
            .take(size / 2),
    );
    std::fs::write(&p, &data).unwrap();
    let mut peak = (0u64, 0u64);
    for (i, compress) in ["none", "zstd"].iter().enumerate() {
        let q = t.join(&format!("m{i}.bin"));
        std::fs::copy(&p, &q).unwrap();
        let child = spawn_send(
            &addr,
            &q,
            &t.join("c"),
            &["--parallel", "8", "--compress", compress],
        );
        assert!(
            watch_rss(child, server_pid, &mut peak).success(),
            "push {compress}"
        );
        let out = t.join(&format!("out{i}"));
        let child = Command::new(FERRY)
            .args([
                "fastdp",
                "get",
                "--addr",
                &addr,
                "--out",
                out.to_str().unwrap(),
                "--parallel",
                "8",
                "--compress",
                compress,
                &format!("m{i}.bin"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        assert!(
            watch_rss(child, server_pid, &mut peak).success(),
            "pull {compress}"
        );
        assert_eq!(sha256_file(&out.join(format!("m{i}.bin"))), sha256_file(&p));
    }
    assert!(peak.0 < 64 * 1024, "server RssAnon peak {} KiB", peak.0);
    assert!(peak.1 < 64 * 1024, "client RssAnon peak {} KiB", peak.1);
}

#[test]
fn ferry_serve_has_a_fastdp_listener_unless_it_is_off() {
    let t = TempDir::new("fdp-serve");
    let root = t.join("share");
    let base = [
        "serve",
        root.to_str().unwrap(),
        "--jtp-bind",
        "127.0.0.1:0",
        "--tej-bind",
        "127.0.0.1:0",
        "--cjp2p-bind",
        "127.0.0.1:0",
        "--no-tls",
    ];
    let mut args = base.to_vec();
    args.extend(["--fastdp-bind", "127.0.0.1:0"]);
    let srv = Server::start(&args, 4);
    assert_serves(&srv.addr("fastdp"), &t);
    drop(srv);
    let mut args = base.to_vec();
    args.extend(["--fastdp-bind", "off"]);
    let srv = Server::start(&args, 3);
    assert!(srv.listening.iter().all(|(p, _)| p != "fastdp"));
}

#[test]
fn f25_disk_full_on_a_small_tmpfs_gives_no_space_and_nothing_half_written() {
    let t = TempDir::new("fdp-full");
    let mnt = t.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let script = format!(
        "mount -t tmpfs -o size=16m tmpfs {m} || exit 97; exec {f} fastdp serve --bind 127.0.0.1:0 --root {m}/share --disk-reserve 0 -v",
        m = mnt.display(),
        f = FERRY
    );
    let mut child = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare must exist (util-linux) to run this test");
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pid = child.id();
    let mut guard = Kill(child);
    if line.is_empty() {
        let mut err = String::new();
        let _ = guard.0.stderr.take().unwrap().read_to_string(&mut err);
        panic!("cannot mount a tmpfs in a new mount namespace (needs root): {err}");
    }
    let addr = line.trim().rsplit(' ').next().unwrap().to_string();
    // The server's view of its folder, through its mount namespace.
    let share = PathBuf::from(format!("/proc/{pid}/root{}/share", mnt.display()));
    let a = t.join("a.bin");
    std::fs::write(&a, pseudo_random(251, 10 << 20)).unwrap();
    let v = send_ok(&addr, &a, &t.join("c"), &[]);
    assert_eq!(v["stored_as"], "a.bin");
    let b = t.join("b.bin");
    std::fs::write(&b, pseudo_random(252, 10 << 20)).unwrap();
    let o = send(&addr, &b, &t.join("c"), &["--retries", "0"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no-space"),
        "{}",
        text(&o)
    );
    // 1.1.0 into the full disk: its line, right after the header.
    let mut s = upgraded(&addr, "1.1.0");
    let v = json!({"OneChunk": 1048576, "FullChunk": 10, "FullSize": 10 << 20, "DPVersion": "1.1.0", "CompressType": "None", "FileName": "c.bin", "Checksum": sha(b"")});
    s.write_all(&jmsg(v.to_string().as_bytes())).unwrap();
    assert_eq!(read_all(&mut s), b"ERROR: Not enough disk space.".to_vec());
    let names = visible(&share);
    assert_eq!(names, ["a.bin"], "nothing half-written is visible");
    let work = PathBuf::from(format!(
        "/proc/{pid}/root{}/share/.ferry/ingest/fastdp",
        mnt.display()
    ));
    let left: Vec<String> = std::fs::read_dir(&work)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".done"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(sha256_file(&share.join("a.bin")), sha256_file(&a));
    assert_serves(&addr, &t);
}

/// An address that does not resolve (a typo, a missing port, or a flag taken as the address)
/// fails at once with exit 3 and says what it wanted, for send and get: no silent retries.
#[test]
fn an_address_that_does_not_resolve_fails_at_once_with_exit_3() {
    let t = TempDir::new("fdp-badaddr");
    let p = t.join("x.bin");
    std::fs::write(&p, b"x").unwrap();
    for addr in ["--out", "no-port-here", "host.invalid:5423"] {
        let started = Instant::now();
        let o = send(addr, &p, &t.join("c"), &[]);
        assert_eq!(o.status.code(), Some(3), "send {addr}: {}", text(&o));
        assert!(
            text(&o).contains(&format!("resolve {addr}")),
            "{}",
            text(&o)
        );
        // The form is hinted at only when the port is missing.
        let hinted = !addr.ends_with(":5423");
        assert_eq!(
            text(&o).contains("(want HOST:PORT)"),
            hinted,
            "{}",
            text(&o)
        );
        let o = get(addr, "x.bin", &t.join("out"), &[]);
        assert_eq!(o.status.code(), Some(3), "get {addr}: {}", text(&o));
        assert!(
            text(&o).contains(&format!("resolve {addr}")),
            "{}",
            text(&o)
        );
        assert!(!t.join("out").exists(), "get {addr} made its output folder");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{addr}: retried"
        );
    }
}

/// A server that is down: the first retry is said on stderr without --verbose (no minutes of
/// silence), and the client gives up with exit 3 once its attempts are spent.
#[test]
fn a_server_that_is_down_is_said_at_the_first_retry() {
    let t = TempDir::new("fdp-down");
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let p = t.join("x.bin");
    std::fs::write(&p, b"x").unwrap();
    let o = send(&addr, &p, &t.join("c"), &["--retries", "1"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.matches("retrying in").count(), 1, "{err}");
    // --retries 1: one retry, two attempts.
    assert!(err.contains("(at most 1 retry without progress)"), "{err}");
    assert!(err.contains("giving up after 2 attempts"), "{err}");
}
