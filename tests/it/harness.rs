//! Shared test machinery: temporary folders, running `ferry` and reading its `listening` lines.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// A fresh folder under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "ferry-it-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `ferry` server; killed on drop.
pub struct Server {
    pub child: Child,
    /// `(proto, addr)` from each `listening` line.
    pub listening: Vec<(String, String)>,
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    /// Starts `ferry ARGS...` and waits for `expect` listening lines. The wait is long (180 s)
    /// because a server prints them only once its first scan has hashed the folder, and a test
    /// folder holding a 4 GiB sparse file takes a minute of a busy machine: how long start-up
    /// takes is measured by `make bench`, never asserted here.
    ///
    /// `ferry serve` also listens for FastDP and filestorage on fixed defaults (port 5423, port
    /// 9000, a Unix socket with a lock file); tests run in parallel, so unless the test names
    /// those flags itself they are turned off here.
    pub fn start(args: &[&str], expect: usize) -> Server {
        let mut args = args.to_vec();
        if args.first() == Some(&"serve") {
            for flag in ["--fastdp-bind", "--filestorage-bind", "--filestorage-unix"] {
                if !args.contains(&flag) {
                    args.extend([flag, "off"]);
                }
            }
        }
        Server::start_program(FERRY, &args, expect)
    }

    /// As [`start`](Self::start) for a program that ends up running ferry (a wrapper that
    /// `exec`s it, so the child's pid is the server's).
    pub fn start_program(program: &str, args: &[&str], expect: usize) -> Server {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ferry");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                log2.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let r = BufReader::new(stdout);
            for line in r.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut listening = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(180);
        while listening.len() < expect {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let mut it = line.split_whitespace();
                    if it.next() == Some("listening") {
                        let proto = it.next().unwrap_or("").to_string();
                        let addr = it.next().unwrap_or("").to_string();
                        listening.push((proto, addr));
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "ferry {args:?} did not print {expect} listening lines; stderr:\n{}",
                        log.lock().unwrap()
                    );
                }
            }
        }
        Server {
            child,
            listening,
            stderr: log,
        }
    }

    /// The address of the first listener of `proto`.
    pub fn addr(&self, proto: &str) -> String {
        self.listening
            .iter()
            .find(|(p, _)| p == proto)
            .map(|(_, a)| a.clone())
            .unwrap_or_else(|| panic!("no {proto} listener in {:?}", self.listening))
    }

    /// Sends a signal to the server process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `ferry ARGS...` to completion with a time limit.
pub fn ferry(args: &[&str], timeout: Duration) -> Output {
    let mut child = Command::new(FERRY)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferry");
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
            let s = child.wait().unwrap();
            panic!(
                "ferry {args:?} did not finish within {timeout:?} ({s:?}); stderr:\n{}",
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

pub fn sha256_file(p: &Path) -> [u8; 32] {
    let mut f = std::fs::File::open(p).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().into()
}

/// Deterministic pseudo-random bytes (xorshift), for test files.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    // Spread the seed first: `seed | 1` alone would give seeds 2k and 2k+1 the same bytes.
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Every regular, non-dot file of `dir` with its SHA-256, sorted by name.
pub fn tree(dir: &Path) -> Vec<(String, [u8; 32])> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .map(|n| {
            let h = sha256_file(&dir.join(&n));
            (n, h)
        })
        .collect();
    v.sort();
    v
}
