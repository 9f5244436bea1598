//! CJP2P end to end (cjp2p.md sections 1, 6, 9 and the checklist of section 11): real `ferry
//! cjp2p node` / `ferry cjp2p get` processes on loopback, plus test-side helpers written with
//! the ferry library or raw UDP sockets:
//!
//! - [`Proxy`]: a UDP relay in front of a seeder that counts the `Content` payload bytes it
//!   carries and can stop forwarding after a budget (a seeder that vanishes, a stalled transfer);
//! - [`LibSeeder`]: a seeder built from [`Node`] and a test [`ContentStore`] (honest or
//!   corrupting), which can also inject hostile datagrams toward the downloader;
//! - [`Raw`]: a raw UDP socket that does the cookie handshake by hand and sends anything.
//!
//! Tests are named after the checklist items they cover.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ferry::proto::cjp2p::node::{ContentStore, Node, NodeConfig};
use sha2::{Digest, Sha256};

use crate::harness::{ferry, pseudo_random, sha256_file, Server, TempDir, FERRY};

// ---- small helpers ---------------------------------------------------------------------------

pub(crate) fn hex(b: &[u8]) -> String {
    ferry::wire::hex::encode(b)
}

pub(crate) fn sha(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Writes `data` as `dir/name` and returns its id (64 lowercase hex).
pub(crate) fn put(dir: &Path, name: &str, data: &[u8]) -> String {
    std::fs::write(dir.join(name), data).unwrap();
    hex(&sha(data))
}

pub(crate) fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `ferry cjp2p node --bind 127.0.0.1:0 --root DIR [EXTRA...]`.
pub(crate) fn node(root: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["cjp2p", "node", "--bind", "127.0.0.1:0", "--root", p(root)];
    args.extend_from_slice(extra);
    let s = Server::start(&args, 1);
    assert_eq!(s.listening[0].0, "cjp2p", "{:?}", s.listening);
    s
}

/// `ferry cjp2p get ID --peer P... --out OUT [EXTRA...]`, at most 180 s.
pub(crate) fn get(id: &str, peers: &[&str], out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["cjp2p", "get", id];
    for peer in peers {
        args.push("--peer");
        args.push(peer);
    }
    args.push("--out");
    args.push(p(out));
    args.extend_from_slice(extra);
    ferry(&args, Duration::from_secs(180))
}

pub(crate) fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a successful `get` and that `out/name` has exactly `want`'s SHA-256.
pub(crate) fn assert_got(o: &Output, out: &Path, name: &str, want: &[u8; 32]) {
    assert_eq!(code(o), 0, "get failed; stderr:\n{}", stderr(o));
    let f = out.join(name);
    assert!(
        f.is_file(),
        "{} missing; stderr:\n{}",
        f.display(),
        stderr(o)
    );
    assert_eq!(
        &sha256_file(&f),
        want,
        "{} differs from the source",
        f.display()
    );
}

/// Every regular file below `dir` (recursively, dot folders included): (relative path, size).
pub(crate) fn walk(dir: &Path) -> Vec<(String, u64)> {
    fn rec(base: &Path, d: &Path, v: &mut Vec<(String, u64)>) {
        let Ok(rd) = std::fs::read_dir(d) else {
            return;
        };
        for e in rd.filter_map(Result::ok) {
            let path = e.path();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                rec(base, &path, v);
            } else {
                let rel = path
                    .strip_prefix(base)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                v.push((rel, e.metadata().map(|m| m.len()).unwrap_or(0)));
            }
        }
    }
    let mut v = Vec::new();
    rec(dir, dir, &mut v);
    v.sort();
    v
}

/// Files directly in `dir` whose names do not start with a dot.
pub(crate) fn visible_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub(crate) fn ingest_dir(out: &Path) -> PathBuf {
    out.join(".ferry").join("ingest").join("cjp2p")
}

/// Decoded length of the `Content` elements of one datagram (0 if it has none or is not JSON).
pub(crate) fn content_payload(d: &[u8]) -> u64 {
    content_sizes(d).0
}

/// (total, largest) decoded length of the `Content` elements of one datagram.
pub(crate) fn content_sizes(d: &[u8]) -> (u64, u64) {
    let Ok(serde_json::Value::Array(items)) = serde_json::from_slice::<serde_json::Value>(d) else {
        return (0, 0);
    };
    items
        .iter()
        .filter_map(|m| m.get("Content")?.get("base64")?.as_str())
        .map(|b| {
            let pad = b.bytes().rev().take_while(|&c| c == b'=').count();
            (b.len() / 4 * 3).saturating_sub(pad) as u64
        })
        .fold((0, 0), |(s, m), n| (s + n, m.max(n)))
}

/// The `cookie` string of the first `PleaseAlwaysReturnThisMessage` of a datagram.
pub(crate) fn offer_of(d: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(d).ok()?;
    v.as_array()?.iter().find_map(|m| {
        Some(
            m.get("PleaseAlwaysReturnThisMessage")?
                .get("cookie")?
                .as_str()?
                .to_string(),
        )
    })
}

pub(crate) fn b64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

// ---- Proxy: a counting, gateable UDP relay in front of one seeder ------------------------------

/// Relays datagrams between one client and `upstream`. Counts the `Content` payload bytes going
/// to the client; once `budget` is reached it drops everything in both directions (the seeder
/// seems gone). Cookies are per IP (cjp2p.md 4.1), so the relay is transparent on loopback.
pub(crate) struct Proxy {
    pub(crate) addr: String,
    pub(crate) content: Arc<AtomicU64>,
    /// Largest single `Content` payload seen.
    pub(crate) largest: Arc<AtomicU64>,
    pub(crate) budget: Arc<AtomicU64>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) threads: Vec<JoinHandle<()>>,
}

impl Proxy {
    pub(crate) fn start(upstream: &str) -> Proxy {
        let upstream: SocketAddr = upstream.parse().unwrap();
        let front = UdpSocket::bind("127.0.0.1:0").unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").unwrap();
        back.connect(upstream).unwrap();
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        }
        let addr = front.local_addr().unwrap().to_string();
        let content = Arc::new(AtomicU64::new(0));
        let largest = Arc::new(AtomicU64::new(0));
        let budget = Arc::new(AtomicU64::new(u64::MAX));
        let stop = Arc::new(AtomicBool::new(false));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
        let (front, back) = (Arc::new(front), Arc::new(back));
        let mut threads = Vec::new();
        {
            let (front, back, stop, client) =
                (front.clone(), back.clone(), stop.clone(), client.clone());
            let (content, budget) = (content.clone(), budget.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::SeqCst) {
                    if let Ok((n, from)) = front.recv_from(&mut buf) {
                        *client.lock().unwrap() = Some(from);
                        if content.load(Ordering::SeqCst) < budget.load(Ordering::SeqCst) {
                            let _ = back.send(&buf[..n]);
                        }
                    }
                }
            }));
        }
        {
            let (content, budget, stop) = (content.clone(), budget.clone(), stop.clone());
            let largest = largest.clone();
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(n) = back.recv(&mut buf) {
                        if content.load(Ordering::SeqCst) >= budget.load(Ordering::SeqCst) {
                            continue;
                        }
                        let (sum, max) = content_sizes(&buf[..n]);
                        content.fetch_add(sum, Ordering::SeqCst);
                        largest.fetch_max(max, Ordering::SeqCst);
                        if let Some(c) = *client.lock().unwrap() {
                            let _ = front.send_to(&buf[..n], c);
                        }
                    }
                }
            }));
        }
        Proxy {
            addr,
            content,
            largest,
            budget,
            stop,
            threads,
        }
    }

    pub(crate) fn content_bytes(&self) -> u64 {
        self.content.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

// ---- LibSeeder: a seeder written with the ferry library -----------------------------------------

/// Serves one content under `id`; with `corrupt`, every byte it reads is flipped (the size is
/// right, the data is not).
pub(crate) struct TestStore {
    pub(crate) id: [u8; 32],
    pub(crate) data: Vec<u8>,
    pub(crate) corrupt: bool,
}

impl ContentStore for TestStore {
    fn size_of(&self, id: &[u8; 32]) -> Option<u64> {
        (*id == self.id).then_some(self.data.len() as u64)
    }

    fn read_at(&self, id: &[u8; 32], offset: u64, buf: &mut [u8]) -> Option<usize> {
        if *id != self.id {
            return None;
        }
        let src = self.data.get(offset as usize..).unwrap_or(&[]);
        let n = src.len().min(buf.len());
        buf[..n].copy_from_slice(&src[..n]);
        if self.corrupt {
            for b in &mut buf[..n] {
                *b ^= 0x5a;
            }
        }
        Some(n)
    }

    fn list(&self, start: usize, max: usize) -> Vec<([u8; 32], u64)> {
        if start == 0 && max > 0 {
            vec![(self.id, self.data.len() as u64)]
        } else {
            Vec::new()
        }
    }

    fn count(&self) -> usize {
        1
    }
}

/// Builds hostile datagrams toward the downloader, given the cookie the downloader offered
/// (its `AlwaysReturned` makes them verified) and the datagram just received from it. Called
/// for every datagram the seeder receives, before the seeder's [`Node`] answers it.
pub(crate) type Injector = Box<dyn FnMut(&str, &[u8]) -> Vec<Vec<u8>> + Send>;

/// A [`Node`] with a [`TestStore`] on a UDP socket, in a thread.
pub(crate) struct LibSeeder {
    pub(crate) addr: String,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) thread: Option<JoinHandle<()>>,
    pub(crate) injected: Arc<AtomicU64>,
}

impl LibSeeder {
    pub(crate) fn start(store: TestStore, inject: Option<Injector>) -> LibSeeder {
        LibSeeder::start_muted(store, inject, Duration::ZERO)
    }

    /// Like [`LibSeeder::start`], but ignores everything it receives during `mute` first.
    pub(crate) fn start_muted(
        store: TestStore,
        inject: Option<Injector>,
        mute: Duration,
    ) -> LibSeeder {
        LibSeeder::start_with("127.0.0.1:0", store, inject, mute, 0x5eed)
    }

    /// An honest seeder bound to `bind`, with a cookie secret of its own each time (a restart
    /// on the same address forgets every cookie, as a restarted node does).
    pub(crate) fn start_at(bind: &str, store: TestStore) -> LibSeeder {
        static STARTS: AtomicU64 = AtomicU64::new(1);
        let seed = STARTS.fetch_add(1, Ordering::SeqCst) ^ u64::from(std::process::id()) << 20;
        LibSeeder::start_with(bind, store, None, Duration::ZERO, seed)
    }

    fn start_with(
        bind: &str,
        store: TestStore,
        mut inject: Option<Injector>,
        mute: Duration,
        seed: u64,
    ) -> LibSeeder {
        let sock = UdpSocket::bind(bind).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(10)))
            .unwrap();
        let addr = sock.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let injected = Arc::new(AtomicU64::new(0));
        let (stop2, injected2) = (stop.clone(), injected.clone());
        let thread = std::thread::spawn(move || {
            let mut secret = [0u8; 32];
            secret.copy_from_slice(&pseudo_random(seed, 32));
            let mut node = Node::new(NodeConfig::default(), secret, Instant::now());
            let mut buf = vec![0u8; 65536];
            let mut their_cookie: Option<String> = None;
            let started = Instant::now();
            while !stop2.load(Ordering::SeqCst) {
                let now = Instant::now();
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    if now < started + mute {
                        continue;
                    }
                    if let Some(c) = offer_of(&buf[..n]) {
                        their_cookie = Some(c);
                    }
                    if let (Some(f), Some(c)) = (inject.as_mut(), their_cookie.as_deref()) {
                        for d in f(c, &buf[..n]) {
                            let _ = sock.send_to(&d, from);
                            injected2.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    node.handle_datagram(now, from, &buf[..n], &store);
                }
                node.handle_timeout(Instant::now());
                while let Some((to, d)) = node.poll_transmit() {
                    let _ = sock.send_to(&d, to);
                }
            }
        });
        LibSeeder {
            addr,
            stop,
            thread: Some(thread),
            injected,
        }
    }
}

impl Drop for LibSeeder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---- Raw: hand-made datagrams -----------------------------------------------------------------

/// A raw UDP socket talking to one ferry node.
pub(crate) struct Raw {
    pub(crate) sock: UdpSocket,
    pub(crate) to: SocketAddr,
    /// Ferry's cookie for 127.0.0.1, once learnt.
    pub(crate) cookie: Option<String>,
}

impl Raw {
    pub(crate) fn new(to: &str) -> Raw {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        Raw {
            sock,
            to: to.parse().unwrap(),
            cookie: None,
        }
    }

    pub(crate) fn send(&self, d: &[u8]) {
        self.sock.send_to(d, self.to).unwrap();
    }

    /// Every datagram that arrives within `wait` (ending early after `wait` of silence).
    pub(crate) fn collect(&self, wait: Duration) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        let mut buf = vec![0u8; 65536];
        self.sock.set_read_timeout(Some(wait)).unwrap();
        while let Ok((n, from)) = self.sock.recv_from(&mut buf) {
            if from == self.to {
                v.push(buf[..n].to_vec());
            }
        }
        v
    }

    /// Sends `d` and returns the replies.
    pub(crate) fn ask(&self, d: &[u8], wait: Duration) -> Vec<Vec<u8>> {
        self.collect(Duration::from_millis(1)); // drop stale replies
        self.send(d);
        self.collect(wait)
    }

    /// Learns ferry's cookie from its offer (cjp2p.md 4.5).
    pub(crate) fn handshake(&mut self) -> String {
        let replies = self.ask(
            br#"[{"PleaseAlwaysReturnThisMessage":{"cookie":"0badc0de"}},{"PleaseReturnThisMessage":{"cookie":"1.5"}}]"#,
            Duration::from_millis(500),
        );
        let c = replies
            .iter()
            .find_map(|d| offer_of(d))
            .unwrap_or_else(|| panic!("no cookie offer in {:?}", texts(&replies)));
        self.cookie = Some(c.clone());
        c
    }

    /// `[AlwaysReturned(cookie), body...]`: a verified datagram.
    pub(crate) fn verified(&self, body: &str) -> Vec<u8> {
        let c = self.cookie.as_deref().expect("handshake first");
        let sep = if body.is_empty() { "" } else { "," };
        format!(r#"[{{"AlwaysReturned":{{"cookie":"{c}"}}}}{sep}{body}]"#).into_bytes()
    }
}

pub(crate) fn texts(v: &[Vec<u8>]) -> Vec<String> {
    v.iter()
        .map(|d| String::from_utf8_lossy(&d[..d.len().min(300)]).into_owned())
        .collect()
}

/// A `Content` element with `data` at `offset`.
pub(crate) fn content_elem(id: &str, offset: u64, data: &[u8], eof: u64) -> String {
    format!(
        r#"{{"Content":{{"id":"{id}","offset":{offset},"base64":"{}","eof":{eof}}}}}"#,
        b64(data)
    )
}

// ---- C21, C24, C26, C32: ferry to ferry ------------------------------------------------------

/// C21/C32: sizes 1, 65537 (a 1-byte last block), 10000 (not a multiple of 4096) and 8 MiB go
/// from one ferry node to `ferry cjp2p get` and arrive with the source's SHA-256, under the id
/// or under `--name`.
#[test]
fn c21_c32_get_from_ferry_node_various_sizes() {
    let share = TempDir::new("cj-share");
    let sizes: [(usize, u64); 4] = [(1, 1), (65537, 2), (10000, 3), (8 << 20, 4)];
    let ids: Vec<(String, [u8; 32])> = sizes
        .iter()
        .map(|&(n, seed)| {
            let data = pseudo_random(seed, n);
            (put(share.path(), &format!("f{n}"), &data), sha(&data))
        })
        .collect();
    let seeder = node(share.path(), &[]);
    let a = seeder.addr("cjp2p");
    for (id, want) in &ids {
        let out = TempDir::new("cj-out");
        let o = get(id, &[&a], out.path(), &[]);
        assert_got(&o, out.path(), id, want);
        // Nothing else is left visible; the partial data is gone after publication.
        assert_eq!(visible_files(out.path()), vec![id.clone()]);
        assert!(
            !ingest_dir(out.path()).join(format!("{id}.bitmap")).exists(),
            "bitmap left after success"
        );
    }
    // --name and --json.
    let out = TempDir::new("cj-out");
    let o = get(&ids[1].0, &[&a], out.path(), &["--name", "x.bin", "--json"]);
    assert_got(&o, out.path(), "x.bin", &ids[1].1);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verified"], true, "{v}");
    assert_eq!(v["size"], 65537, "{v}");
}

/// C24 and the `eof = 0` rule of 6.7: the empty file (the only id for which `eof = 0` is
/// accepted) downloads as an empty file.
#[test]
fn c24_get_empty_file() {
    let share = TempDir::new("cj-share");
    let id = put(share.path(), "empty", b"");
    assert_eq!(
        id,
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    let seeder = node(share.path(), &[]);
    let out = TempDir::new("cj-out");
    let o = get(
        &id,
        &[&seeder.addr("cjp2p")],
        out.path(),
        &["--timeout", "20"],
    );
    assert_got(&o, out.path(), &id, &sha(b""));
    assert_eq!(std::fs::metadata(out.join(&id)).unwrap().len(), 0);
}

/// C26: with `--block-size 4096` ferry requests reference-sized blocks; 65537 bytes and 8 MiB
/// still arrive intact, and every `Content` the seeder sent carried at most 4096 bytes.
#[test]
fn c26_get_with_reference_sized_blocks() {
    let share = TempDir::new("cj-share");
    let small = pseudo_random(11, 65537);
    let big = pseudo_random(12, 8 << 20);
    let ids = [
        (put(share.path(), "small", &small), sha(&small)),
        (put(share.path(), "big", &big), sha(&big)),
    ];
    let seeder = node(share.path(), &[]);
    for (id, want) in &ids {
        let proxy = Proxy::start(&seeder.addr("cjp2p"));
        let out = TempDir::new("cj-out");
        let o = get(id, &[&proxy.addr], out.path(), &["--block-size", "4096"]);
        assert_got(&o, out.path(), id, want);
        let largest = proxy.largest.load(Ordering::SeqCst);
        assert!(
            largest <= 4096,
            "a Content of {largest} bytes with --block-size 4096"
        );
        // Payload carried is the file plus little (no 32 KiB blocks re-sent many times).
        let sent = proxy.content_bytes();
        let size = std::fs::metadata(out.join(id)).unwrap().len();
        assert!(sent >= size, "proxy saw {sent} bytes for {size}");
    }
    // Usage errors: not a multiple of 4096, above 40960.
    let out = TempDir::new("cj-out");
    for bad in ["1000", "0", "45056"] {
        let o = get(
            &ids[0].0,
            &[&seeder.addr("cjp2p")],
            out.path(),
            &["--block-size", bad],
        );
        assert_eq!(code(&o), 2, "--block-size {bad}: {}", stderr(&o));
    }
}

/// Usage errors exit 2: a bad id, no peer, a bad peer.
#[test]
fn cjp2p_get_usage_errors() {
    let out = TempDir::new("cj-out");
    let id = hex(&sha(b"x"));
    for args in [
        vec![
            "cjp2p",
            "get",
            "ABC",
            "--peer",
            "127.0.0.1:9",
            "--out",
            p(out.path()),
        ],
        vec!["cjp2p", "get", &id, "--out", p(out.path())],
        vec![
            "cjp2p",
            "get",
            &id,
            "--peer",
            "localhost",
            "--out",
            p(out.path()),
        ],
    ] {
        let o = ferry(&args, Duration::from_secs(30));
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
    }
    assert!(visible_files(out.path()).is_empty());
}

// ---- C29: several sources --------------------------------------------------------------------

/// Two seeders of the same 8 MiB behind counting relays; `get --peer A --peer B`: the file
/// arrives and both seeders delivered part of it.
#[test]
fn c29_two_seeders_both_serve() {
    let size = 8 << 20;
    let data = pseudo_random(21, size);
    let (s_a, s_b) = (TempDir::new("cj-s_a"), TempDir::new("cj-s_b"));
    let id = put(s_a.path(), "f", &data);
    put(s_b.path(), "g", &data);
    let (n1, n2) = (node(s_a.path(), &[]), node(s_b.path(), &[]));
    let (p1, p2) = (
        Proxy::start(&n1.addr("cjp2p")),
        Proxy::start(&n2.addr("cjp2p")),
    );
    let out = TempDir::new("cj-out");
    let o = get(&id, &[&p1.addr, &p2.addr], out.path(), &[]);
    assert_got(&o, out.path(), &id, &sha(&data));
    let (b1, b2) = (p1.content_bytes(), p2.content_bytes());
    assert!(
        b1 > 0 && b2 > 0,
        "both seeders must serve: {b1} and {b2} bytes"
    );
    assert!(b1 + b2 >= size as u64);
    // "No block fetched twice outside the endgame": allow the endgame and some loss.
    assert!(
        b1 + b2 <= size as u64 + size as u64 / 4,
        "{b1} + {b2} bytes carried for {size}"
    );
}

/// C29: the first seeder disappears (SIGKILL) after delivering 2 MiB of 32 MiB; the download
/// finishes from the second one.
#[test]
fn c29_seeder_killed_mid_transfer() {
    let size = 32 << 20;
    let data = pseudo_random(22, size);
    let (s_a, s_b) = (TempDir::new("cj-s_a"), TempDir::new("cj-s_b"));
    let id = put(s_a.path(), "f", &data);
    put(s_b.path(), "f", &data);
    let (mut n1, n2) = (node(s_a.path(), &[]), node(s_b.path(), &[]));
    let (p1, p2) = (
        Proxy::start(&n1.addr("cjp2p")),
        Proxy::start(&n2.addr("cjp2p")),
    );
    // The relay goes silent at 2 MiB (the seeder is as good as dead from then on) ...
    p1.budget.store(2 << 20, Ordering::SeqCst);
    let out = TempDir::new("cj-out");
    let (id2, out2, a1, a2) = (id.clone(), out.0.clone(), p1.addr.clone(), p2.addr.clone());
    let t = std::thread::spawn(move || get(&id2, &[&a1, &a2], &out2, &["--timeout", "60"]));
    // ... and is then really killed.
    let deadline = Instant::now() + Duration::from_secs(60);
    while p1.content_bytes() < 2 << 20 && !t.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = n1.child.kill();
    let o = t.join().unwrap();
    assert_got(&o, out.path(), &id, &sha(&data));
    let (b1, b2) = (p1.content_bytes(), p2.content_bytes());
    eprintln!("seeder killed mid-transfer: {b1} bytes from the first, {b2} from the second");
    assert!(b1 > 0, "the first seeder never served");
    // The first relay carries at most its budget plus what was in flight.
    assert!(
        b1 < (4 << 20),
        "the first seeder served {b1} bytes after going silent"
    );
    assert!(
        b2 >= size as u64 - b1,
        "the second seeder served only {b2} bytes"
    );
}

// ---- C30, C31: SIGKILL and resume ------------------------------------------------------------

/// C30/C31: a 64 MiB download stalls after 24 MiB (the relay stops) and is killed with SIGKILL.
/// The partial file and its bitmap are there; rerunning the same command resumes ("resuming
/// ID: N of M blocks on disk", 0 < N < M), completes with the right SHA-256, and the second
/// run fetches only about what was missing.
#[test]
fn c30_c31_sigkill_then_resume() {
    let size: u64 = 64 << 20;
    let data = pseudo_random(31, size as usize);
    let want = sha(&data);
    let share = TempDir::new("cj-share");
    let id = put(share.path(), "big", &data);
    drop(data);
    let seeder = node(share.path(), &[]);
    let proxy = Proxy::start(&seeder.addr("cjp2p"));
    let stall_at: u64 = 24 << 20;
    proxy.budget.store(stall_at, Ordering::SeqCst);
    let out = TempDir::new("cj-out");
    let log = out.join("first.log");
    let mut child = Command::new(FERRY)
        .args([
            "cjp2p",
            "get",
            &id,
            "--peer",
            &proxy.addr,
            "--out",
            p(out.path()),
            "-v",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while proxy.content_bytes() < stall_at {
        assert!(Instant::now() < deadline, "first run made no progress");
        assert!(
            matches!(child.try_wait(), Ok(None)),
            "first run ended early: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The bitmap is flushed at least every second (C30).
    std::thread::sleep(Duration::from_millis(1600));
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    let part = ingest_dir(out.path()).join(format!("{id}.part"));
    let bitmap = ingest_dir(out.path()).join(format!("{id}.bitmap"));
    assert!(
        bitmap.is_file(),
        "no bitmap after the kill: {:?}",
        walk(out.path())
    );
    assert!(part.is_file(), "no partial file after the kill");
    assert_eq!(
        std::fs::metadata(&part).unwrap().len(),
        size,
        "part not sized to eof"
    );
    assert!(!out.join(&id).exists(), "published before completion");

    // Rerun the same command: resumes and fetches only the rest.
    let before = proxy.content_bytes();
    proxy.budget.store(u64::MAX, Ordering::SeqCst);
    let o = get(&id, &[&proxy.addr], out.path(), &["-v"]);
    assert_got(&o, out.path(), &id, &want);
    let err = stderr(&o);
    let line = err
        .lines()
        .find(|l| l.contains("resuming") && l.contains(&id))
        .unwrap_or_else(|| panic!("no resuming line in:\n{err}"));
    // "cjp2p: resuming ID: N of M blocks on disk"
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty() && s.len() < 20)
        .filter_map(|s| s.parse().ok())
        .collect();
    let (have, blocks) = (nums[nums.len() - 2], nums[nums.len() - 1]);
    assert_eq!(blocks, size / 4096, "{line}");
    assert!(have > 0 && have < blocks, "{line}");
    let missing = (blocks - have) * 4096;
    let second = proxy.content_bytes() - before;
    eprintln!("resume: {have} of {blocks} blocks on disk; the rerun fetched {second} bytes for {missing} missing");
    assert!(
        second < size,
        "second run fetched {second} bytes: the whole file again"
    );
    assert!(
        second <= missing + missing / 4 + (1 << 20),
        "second run fetched {second} bytes for {missing} missing"
    );
    assert!(!bitmap.exists(), "bitmap left after success");
}

// ---- C32: corrupt seeders --------------------------------------------------------------------

/// C32: a seeder that flips every byte (right size, wrong data) never gets a file published:
/// `get` exits 1 and nothing appears under a final name.
#[test]
fn c32_corrupt_seeder_publishes_nothing() {
    let data = pseudo_random(41, 100_000);
    let id = sha(&data);
    let bad = LibSeeder::start(
        TestStore {
            id,
            data: data.clone(),
            corrupt: true,
        },
        None,
    );
    let out = TempDir::new("cj-out");
    let o = get(&hex(&id), &[&bad.addr], out.path(), &["--timeout", "5"]);
    eprintln!("corrupt seeder: get said:\n{}", stderr(&o));
    assert_eq!(code(&o), 1, "stderr:\n{}", stderr(&o));
    assert!(
        visible_files(out.path()).is_empty(),
        "a file was published: {:?}",
        visible_files(out.path())
    );
}

/// C32: with a corrupt and an honest seeder, the download ends with a verified file.
#[test]
fn c32_corrupt_and_honest_seeder_succeeds() {
    let data = pseudo_random(42, 300_000);
    let id = sha(&data);
    let share = TempDir::new("cj-share");
    put(share.path(), "f", &data);
    let honest = node(share.path(), &[]);
    for round in 0..4 {
        // Odd rounds: the corrupt seeder answers only after 300 ms, so the honest one sets
        // `eof`; even rounds: whichever answers first.
        let mute = Duration::from_millis(if round % 2 == 1 { 300 } else { 0 });
        let bad = LibSeeder::start_muted(
            TestStore {
                id,
                data: data.clone(),
                corrupt: true,
            },
            None,
            mute,
        );
        let out = TempDir::new("cj-out");
        // Both orders: which source sets `eof` must not matter.
        let good = honest.addr("cjp2p");
        let peers = if round / 2 == 0 {
            [bad.addr.as_str(), good.as_str()]
        } else {
            [good.as_str(), bad.addr.as_str()]
        };
        let o = get(&hex(&id), &peers, out.path(), &["--timeout", "20"]);
        assert_eq!(
            code(&o),
            0,
            "round {round}, --peer {peers:?} (corrupt {}); stderr:\n{}",
            bad.addr,
            stderr(&o)
        );
        assert_got(&o, out.path(), &hex(&id), &id);
        assert_eq!(visible_files(out.path()), vec![hex(&id)]);
    }
}

// ---- C42, section 9: hostile input -------------------------------------------------------------

/// Section 9, reference crash 1: verified `ReturnedMessage`s with non-numeric cookies, plus
/// other hostile datagrams against a running node; after each the node is alive, answers a
/// verified request, and serves a `get`.
#[test]
fn c42_hostile_datagrams_against_node() {
    let share = TempDir::new("cj-share");
    let small = pseudo_random(51, 10000);
    let sid = put(share.path(), "small", &small);
    let mut seeder = node(share.path(), &[]);
    let a = seeder.addr("cjp2p");
    let mut raw = Raw::new(&a);
    raw.handshake();
    let random_id = hex(&sha(b"nobody has this"));
    let block = pseudo_random(52, 4096);
    let deep_array = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let deep_obj = format!(
        r#"[{{"PleaseSendPeers":{}1{}}}]"#,
        r#"{"a":"#.repeat(200),
        "}".repeat(200)
    );
    let mut inputs: Vec<(&str, Vec<u8>)> = Vec::new();
    for c in ["not-a-number", "-1", "NaN", "1e300", "", "inf"] {
        let body = format!(r#"{{"ReturnedMessage":{{"cookie":"{c}"}}}}"#);
        inputs.push(("returned (verified)", raw.verified(&body)));
        // The reference's order: the cookie after the message.
        let mut d = format!("[{body},").into_bytes();
        d.extend_from_slice(&raw.verified("")[1..]);
        inputs.push(("returned, cookie last", d));
    }
    inputs.push((
        "returned non-string",
        raw.verified(r#"{"ReturnedMessage":{"cookie":1e300}},{"ReturnedMessage":{"x":[1,2]}}"#),
    ));
    // Crash 2: unaligned Content near eof, for ids served and unknown, verified or not.
    for id in [&sid, &random_id] {
        let c = content_elem(id, 9999, &block, 10000);
        inputs.push(("content near eof (verified)", raw.verified(&c)));
        inputs.push(("content near eof", format!("[{c}]").into_bytes()));
        // Crash 3: a first Content with eof 2^50.
        let c = content_elem(id, 0, &block, 1 << 50);
        inputs.push(("content eof 2^50 (verified)", raw.verified(&c)));
        inputs.push(("content eof 2^50", format!("[{c}]").into_bytes()));
        let c = content_elem(id, u64::MAX - 10, &block, u64::MAX);
        inputs.push(("content offset u64::MAX", raw.verified(&c)));
    }
    inputs.push((
        "content eof above u64",
        raw.verified(&format!(
            r#"{{"Content":{{"id":"{sid}","offset":0,"base64":"AAAA","eof":1e30}}}}"#
        )),
    ));
    inputs.push((
        "content bad base64",
        raw.verified(&format!(
            r#"{{"Content":{{"id":"{sid}","offset":0,"base64":"!!!*","eof":10000}}}}"#
        )),
    ));
    for body in [
        format!(
            r#"{{"PleaseSendContent":{{"id":"{sid}","offset":18446744073709551615,"length":18446744073709551615}}}}"#
        ),
        format!(r#"{{"PleaseSendContent":{{"id":"{sid}","offset":1e30,"length":-1}}}}"#),
        format!(r#"{{"PleaseSendContent":{{"id":"{sid}","offset":0,"length":"16"}}}}"#),
        r#"{"PleaseSendContent":{"id":"../../etc/passwd","offset":0,"length":4096}}"#.to_string(),
        r#"{"PleaseSendContent":{"id":"blake3/../../x","offset":0,"length":4096}}"#.to_string(),
        format!(
            r#"{{"MaybeTheyHaveSome":{{"id":"{random_id}","peers":["127.0.0.1:9","[::1]:9","x"]}}}}"#
        ),
        r#"{"Peers":{"peers":["127.0.0.1:1","0.0.0.0:0","::1:24254"]}}"#.to_string(),
        r#"{"ContentList":{"results":[["zz",1],[1,2]]}}"#.to_string(),
        r#"{"SignedMessage":{"x":1}},{"Forwarded":{"from":"1.2.3.4:5","messages":[]}}"#.to_string(),
    ] {
        inputs.push(("odd element (verified)", raw.verified(&body)));
        inputs.push(("odd element", format!("[{body}]").into_bytes()));
    }
    let garbage: Vec<(&str, Vec<u8>)> = vec![
        ("not utf-8", vec![0xff, 0xfe, 0x80, 0x00, b'[', 0xc3]),
        ("not json", b"hello".to_vec()),
        ("not an array", br#"{"PleaseSendPeers":{}}"#.to_vec()),
        ("truncated", br#"[{"PleaseSendPeers":{}"#.to_vec()),
        ("deep array", deep_array.into_bytes()),
        ("deep object", deep_obj.into_bytes()),
        ("empty array", b"[]".to_vec()),
        ("numbers", b"[1,2]".to_vec()),
        ("empty object", b"[{}]".to_vec()),
        (
            "two keys",
            br#"[{"PleaseSendPeers":{},"PleaseListContent":{}}]"#.to_vec(),
        ),
        (
            "unknown types",
            br#"[{"Foo":{}},{"MyPublicKey":{"k":"x"}}]"#.to_vec(),
        ),
        ("empty datagram", Vec::new()),
        ("64 KiB", vec![b'['; 65507]),
    ];
    inputs.extend(garbage);
    let probe = raw.verified(&format!(
        r#"{{"PleaseSendContent":{{"id":"{sid}","offset":4096,"length":4096}}}}"#
    ));
    for (i, (what, d)) in inputs.iter().enumerate() {
        raw.send(d);
        // Alive and serving: a verified request still gets its 4096 bytes.
        let replies = raw.ask(&probe, Duration::from_millis(300));
        let got: u64 = replies.iter().map(|r| content_payload(r)).sum();
        assert!(
            seeder.is_alive(),
            "node died after {what}; stderr:\n{}",
            seeder.stderr_text()
        );
        assert_eq!(got, 4096, "no answer after {what}: {:?}", texts(&replies));
        if i % 8 == 0 {
            let out = TempDir::new("cj-out");
            let o = get(&sid, &[&a], out.path(), &["--timeout", "20"]);
            assert_got(&o, out.path(), &sid, &sha(&small));
        }
    }
    let out = TempDir::new("cj-out");
    let o = get(&sid, &[&a], out.path(), &["--timeout", "20"]);
    assert_got(&o, out.path(), &sid, &sha(&small));
    // Nothing was written into the served folder because of all that (C43).
    assert_eq!(visible_files(share.path()), vec!["small".to_string()]);
}

/// C17, C5, C4: no reply at all to datagrams without a message ferry handles.
#[test]
fn c17_no_reply_to_nothing() {
    let share = TempDir::new("cj-share");
    put(share.path(), "f", b"x");
    let seeder = node(share.path(), &[]);
    let a = seeder.addr("cjp2p");
    let mut raw = Raw::new(&a);
    let inputs: Vec<Vec<u8>> = vec![
        b"[]".to_vec(),
        b"[1,2]".to_vec(),
        b"[{}]".to_vec(),
        br#"[{"Foo":{}},{"SignedMessage":{}}]"#.to_vec(),
        b"garbage".to_vec(),
        format!("{}{}", "[".repeat(200), "]".repeat(200)).into_bytes(),
    ];
    for d in &inputs {
        let r = raw.ask(d, Duration::from_millis(300));
        assert!(
            r.is_empty(),
            "reply to {:?}: {:?}",
            String::from_utf8_lossy(d),
            texts(&r)
        );
    }
    // (Verified senders are not checked here: once verified, an address is a peer and gets
    // the maintenance tick's probes, which a test cannot tell from replies.)
    let _ = raw.handshake();
}

/// C14, C15: replies to unverified requests stay within Σ(reply + 28) ≤ 2 × (request + 28),
/// and content requests get at most 32 bytes.
#[test]
fn c14_c15_unverified_reply_budget() {
    let share = TempDir::new("cj-share");
    let data = pseudo_random(61, 200_000);
    let id = put(share.path(), "f", &data);
    for i in 0..40 {
        put(share.path(), &format!("g{i}"), &pseudo_random(100 + i, 100));
    }
    let seeder = node(share.path(), &[]);
    let a = seeder.addr("cjp2p");
    let offer = r#"{"PleaseAlwaysReturnThisMessage":{"cookie":"12345678"}}"#;
    let big_offer = format!(
        r#"{{"PleaseAlwaysReturnThisMessage":{{"cookie":"{}"}}}}"#,
        "a".repeat(200)
    );
    let content = format!(r#"{{"PleaseSendContent":{{"id":"{id}","offset":0,"length":40960}}}}"#);
    let content2 =
        format!(r#"{{"PleaseSendContent":{{"id":"{id}","offset":8192,"length":4096}}}}"#);
    let requests: Vec<String> = vec![
        format!("[{content}]"),
        format!("[{content},{offer}]"),
        format!("[{offer},{content},{content2}]"),
        format!("[{big_offer},{content}]"),
        r#"[{"PleaseListContent":{}}]"#.to_string(),
        format!(r#"[{{"PleaseListContent":{{}}}},{offer}]"#),
        r#"[{"PleaseSendPeers":{}}]"#.to_string(),
        format!(r#"[{{"PleaseSendPeers":{{}}}},{{"PleaseListContent":{{}}}},{offer}]"#),
        r#"[{"PleaseReturnThisMessage":{"cookie":"0.5"}}]"#.to_string(),
        format!(
            r#"[{{"PleaseReturnThisMessage":{{"cookie":"{}"}}}}]"#,
            "9".repeat(1000)
        ),
        format!("[{offer}]"),
        // A wrong cookie does not verify.
        format!(r#"[{{"AlwaysReturned":{{"cookie":"00000000"}}}},{content}]"#),
    ];
    for req in &requests {
        // A fresh address each time: nothing stored for it yet.
        let raw = Raw::new(&a);
        let replies = raw.ask(req.as_bytes(), Duration::from_millis(400));
        let spent: usize = replies.iter().map(|r| r.len() + 28).sum();
        let allowed = 2 * (req.len() + 28);
        assert!(
            spent <= allowed,
            "{req}: replies of {spent} bytes (with headers) for an allowance of {allowed}: {:?}",
            texts(&replies)
        );
        let data: u64 = replies.iter().map(|r| content_payload(r)).sum();
        assert!(
            data <= 64,
            "{req}: {data} content bytes to an unverified sender"
        );
        for r in &replies {
            assert!(r.len() <= 1472, "{req}: datagram of {} bytes", r.len());
        }
    }
    // The teaser is the requested bytes, at most 32 of them.
    let raw = Raw::new(&a);
    let replies = raw.ask(
        format!("[{content}]").as_bytes(),
        Duration::from_millis(400),
    );
    let got: u64 = replies.iter().map(|r| content_payload(r)).sum();
    assert!(
        got > 0 && got <= 32,
        "teaser of {got} bytes: {:?}",
        texts(&replies)
    );
}

/// Offsets of the `PleaseSendContent` elements of a datagram.
fn requested_offsets(d: &[u8]) -> Vec<u64> {
    let Ok(serde_json::Value::Array(items)) = serde_json::from_slice::<serde_json::Value>(d) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|m| m.get("PleaseSendContent")?.get("offset")?.as_u64())
        .collect()
}

/// Section 9 crash 2 (and friends) aimed at the downloader: during a 10000-byte download, once
/// `eof` is known (the downloader asks for a block past offset 0), a seeder injects with the
/// downloader's own cookie (and without it) 4096 bytes at offset 9999 with `eof` 10000, data
/// past `eof`, a short non-final block, bad base64, unsolicited ids and a non-numeric
/// `ReturnedMessage`, then answers honestly. Then crash 3 with a second source: a first
/// `Content` with `eof` 2^50. Both downloads end with the verified file; nothing large is
/// allocated; nothing else is published.
#[test]
fn c42_c33_c34_hostile_content_to_downloader() {
    let data = pseudo_random(71, 10000);
    let id = sha(&data);
    let ids = hex(&id);
    let share = TempDir::new("cj-share");
    put(share.path(), "f", &data);
    let honest = node(share.path(), &[]);
    let block = pseudo_random(72, 4096);
    let other = hex(&sha(b"other"));

    // Crash 2: while the download runs with eof known.
    let ids2 = ids.clone();
    let block2 = block.clone();
    let crash2: Injector = Box::new(move |cookie, got| {
        if requested_offsets(got).iter().all(|&o| o == 0) {
            return Vec::new();
        }
        let ar = format!(r#"{{"AlwaysReturned":{{"cookie":"{cookie}"}}}}"#);
        let elems = [
            content_elem(&ids2, 9999, &block2, 10000),
            content_elem(&ids2, 9999, &block2[..1], 10000),
            content_elem(&ids2, 8192, &block2, 10000),
            content_elem(&ids2, 4096, &block2[..100], 10000),
            content_elem(&ids2, 4097, &block2, 10000),
            content_elem(&other, 0, &block2, 4096),
            format!(r#"{{"Content":{{"id":"{ids2}","offset":4096,"base64":"%%%","eof":10000}}}}"#),
            format!(r#"{{"Content":{{"id":"{ids2}","offset":4096,"eof":10000}}}}"#),
            r#"{"ReturnedMessage":{"cookie":"not-a-number"}}"#.to_string(),
            r#"{"ReturnedMessage":{"cookie":"NaN"}}"#.to_string(),
            r#"{"Peers":{"peers":["127.0.0.1:1"]}}"#.to_string(),
            format!(r#"{{"MaybeTheyHaveSome":{{"id":"{ids2}","peers":["127.0.0.1:1"]}}}}"#),
        ];
        let mut v = Vec::new();
        for e in &elems {
            v.push(format!("[{e}]").into_bytes());
            v.push(format!("[{ar},{e}]").into_bytes());
        }
        v
    });
    let hostile = LibSeeder::start(
        TestStore {
            id,
            data: data.clone(),
            corrupt: false,
        },
        Some(crash2),
    );
    let out = TempDir::new("cj-out");
    let o = get(
        &ids,
        &[&hostile.addr, &honest.addr("cjp2p")],
        out.path(),
        &["--timeout", "20", "--block-size", "4096"],
    );
    assert!(
        hostile.injected.load(Ordering::SeqCst) > 0,
        "the downloader never asked the hostile seeder for a block past 0 with a cookie offer"
    );
    assert_got(&o, out.path(), &ids, &id);
    assert_eq!(visible_files(out.path()), vec![ids.clone()]);
    drop(hostile);

    // Crash 3: a first Content claiming eof = 2^50 (and u64::MAX), before any honest answer.
    let ids3 = ids.clone();
    let mut left = 5;
    let crash3: Injector = Box::new(move |cookie, _| {
        if left == 0 {
            return Vec::new();
        }
        left -= 1;
        let ar = format!(r#"{{"AlwaysReturned":{{"cookie":"{cookie}"}}}}"#);
        [1u64 << 50, u64::MAX, (1 << 36) + 4096]
            .iter()
            .map(|&eof| format!("[{ar},{}]", content_elem(&ids3, 0, &block, eof)).into_bytes())
            .collect()
    });
    let hostile = LibSeeder::start(
        TestStore {
            id,
            data: data.clone(),
            corrupt: false,
        },
        Some(crash3),
    );
    let out = TempDir::new("cj-out");
    let o = get(
        &ids,
        &[&hostile.addr, &honest.addr("cjp2p")],
        out.path(),
        &["--timeout", "20"],
    );
    assert!(hostile.injected.load(Ordering::SeqCst) > 0);
    assert_got(&o, out.path(), &ids, &id);
    assert_eq!(visible_files(out.path()), vec![ids.clone()]);
    // Nothing sized from a hostile eof.
    for (path, len) in walk(out.path()) {
        assert!(len <= 1 << 20, "{path} is {len} bytes");
    }
}

/// Crash 3 alone: the only source's first `Content` claims `eof` = 2^50. The download fails
/// (exit 1) and allocates nothing.
#[test]
fn c33_absurd_eof_from_only_source() {
    let id = hex(&sha(b"something"));
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let addr = sock.local_addr().unwrap().to_string();
    let out = TempDir::new("cj-out");
    let (id2, out2) = (id.clone(), out.0.clone());
    let t = std::thread::spawn(move || get(&id2, &[&addr], &out2, &["--timeout", "4"]));
    let block = pseudo_random(81, 4096);
    let mut buf = vec![0u8; 65536];
    let mut cookie = None;
    while !t.is_finished() {
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            if let Some(c) = offer_of(&buf[..n]) {
                cookie = Some(c);
            }
            if let Some(c) = &cookie {
                let d = format!(
                    r#"[{{"AlwaysReturned":{{"cookie":"{c}"}}}},{},{{"PleaseAlwaysReturnThisMessage":{{"cookie":"abcdef01"}}}}]"#,
                    content_elem(&id, 0, &block, 1 << 50)
                );
                let _ = sock.send_to(d.as_bytes(), from);
            }
        }
    }
    let o = t.join().unwrap();
    assert!(cookie.is_some(), "get never offered a cookie");
    assert_eq!(code(&o), 1, "stderr:\n{}", stderr(&o));
    assert!(visible_files(out.path()).is_empty());
    for (path, len) in walk(out.path()) {
        assert!(len <= 1 << 20, "{path} is {len} bytes");
    }
}

// ---- C1, C43, ferry serve ---------------------------------------------------------------------

/// C1: without `--bind` the node uses UDP port 24254. Run in a private network namespace,
/// where that port is always free (it fails, with the reason, if none can be made).
#[test]
fn c1_default_port() {
    if crate::cjp2p_swarm::in_private_network("cjp2p::c1_default_port") {
        return;
    }
    let free = UdpSocket::bind("0.0.0.0:24254").is_ok() && UdpSocket::bind("[::]:24254").is_ok();
    assert!(
        free,
        "UDP port 24254 is taken even in a private network namespace"
    );
    let share = TempDir::new("cj-share");
    let id = put(share.path(), "f", b"default port");
    let seeder = Server::start(&["cjp2p", "node", "--root", p(share.path())], 1);
    let a = seeder.addr("cjp2p");
    assert!(a.ends_with(":24254"), "listening on {a}");
    let out = TempDir::new("cj-out");
    let o = get(&id, &["127.0.0.1:24254"], out.path(), &["--timeout", "20"]);
    assert_got(&o, out.path(), &id, &sha(b"default port"));
}

/// C43: requests for random ids (verified and not), content lists, hints and unsolicited
/// `Content` write nothing under the node's folder.
#[test]
fn c43_remote_requests_write_nothing() {
    let share = TempDir::new("cj-share");
    put(share.path(), "f", &pseudo_random(91, 5000));
    let seeder = node(share.path(), &[]);
    let a = seeder.addr("cjp2p");
    // Let the catalog settle (index written, hashes known).
    let out = TempDir::new("cj-out");
    let id = hex(&sha(&pseudo_random(91, 5000)));
    assert_got(
        &get(&id, &[&a], out.path(), &["--timeout", "20"]),
        out.path(),
        &id,
        &sha(&pseudo_random(91, 5000)),
    );
    std::thread::sleep(Duration::from_millis(500));
    let before = walk(share.path());
    let mut raw = Raw::new(&a);
    raw.handshake();
    for i in 0..200u64 {
        let rid = hex(&sha(&i.to_le_bytes()));
        let body = format!(
            r#"{{"PleaseSendContent":{{"id":"{rid}","offset":0,"length":4096}}}},{{"MaybeTheyHaveSome":{{"id":"{rid}","peers":["127.0.0.1:9"]}}}},{}"#,
            content_elem(&rid, 0, b"data", 4)
        );
        raw.send(&raw.verified(&body));
        raw.send(format!("[{body}]").as_bytes());
        if i % 20 == 0 {
            raw.send(&raw.verified(r#"{"PleaseListContent":{}}"#));
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    std::thread::sleep(Duration::from_millis(1500));
    let after = walk(share.path());
    assert_eq!(before, after, "the node's folder changed");
    assert!(!ingest_dir(share.path()).exists() || walk(&ingest_dir(share.path())).is_empty());
}

/// `ferry serve` runs a CJP2P listener next to JTP and TEJ, and it serves the folder.
#[test]
fn serve_includes_cjp2p() {
    let share = TempDir::new("cj-share");
    let data = pseudo_random(95, 70000);
    let id = put(share.path(), "f", &data);
    let s = Server::start(
        &[
            "serve",
            p(share.path()),
            "--cjp2p-bind",
            "127.0.0.1:0",
            "--jtp-bind",
            "127.0.0.1:0",
            "--tej-bind",
            "127.0.0.1:0",
            "--no-tls",
        ],
        3,
    );
    let mut protos: Vec<&str> = s.listening.iter().map(|(p, _)| p.as_str()).collect();
    protos.sort();
    assert_eq!(protos, ["cjp2p", "jtp", "tej"], "{:?}", s.listening);
    let out = TempDir::new("cj-out");
    let o = get(&id, &[&s.addr("cjp2p")], out.path(), &["--timeout", "20"]);
    assert_got(&o, out.path(), &id, &sha(&data));
}

/// `ferry cjp2p list` and `ferry cjp2p peers` against a node: list shows the served file
/// (exit 0); a node without peers gives an empty `peers` answer (exit 1).
#[test]
fn cjp2p_list_and_peers_commands() {
    let share = TempDir::new("cj-share");
    let id = put(share.path(), "f", b"listed");
    let seeder = node(share.path(), &[]);
    let a = seeder.addr("cjp2p");
    // Before anyone else talked to it, the node knows no peer to advertise.
    let o = ferry(&["cjp2p", "peers", "--peer", &a], Duration::from_secs(30));
    assert_eq!(
        code(&o),
        1,
        "peers of a lone node: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = ferry(&["cjp2p", "list", "--peer", &a], Duration::from_secs(30));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains(&id), "list output: {text}");
    // A node that knows a second node advertises it once it verified it. The second node
    // completes the cookie handshake with its next probe, up to 30 s later (cjp2p.md 8).
    let other = TempDir::new("cj-share2");
    let n2 = node(other.path(), &["--peer", &a]);
    let deadline = Instant::now() + Duration::from_secs(50);
    loop {
        let o = ferry(&["cjp2p", "peers", "--peer", &a], Duration::from_secs(30));
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        if text.lines().any(|l| l.trim() == n2.addr("cjp2p")) {
            assert_eq!(code(&o), 0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node never advertised its peer {}: {text}",
            n2.addr("cjp2p")
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}
