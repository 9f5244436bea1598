//! The server core seen from outside, with the real binary: idle peers on every listener never
//! delay a real client, a TLS peer that stops reading is cut after `--io-timeout`, budgets are
//! per listener, and an idle server does not burn CPU after a burst (issue 8's defects).

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use ferry::transport::{connect_tcp, Stream, TlsClient};

use crate::harness::{ferry, pseudo_random, Server, TempDir};

const T: Duration = Duration::from_secs(10);

/// `ferry serve DIR` on loopback port 0 for all three protocols, JTP plain.
fn serve_all(dir: &Path, extra: &[&str]) -> Server {
    let d = dir.to_str().unwrap();
    let mut args = vec![
        "serve",
        d,
        "--jtp-bind",
        "127.0.0.1:0",
        "--tej-bind",
        "127.0.0.1:0",
        "--cjp2p-bind",
        "127.0.0.1:0",
        "--no-tls",
    ];
    args.extend_from_slice(extra);
    Server::start(&args, 3)
}

fn connect(addr: &str) -> TcpStream {
    let c = TcpStream::connect(addr).expect("connect");
    c.set_read_timeout(Some(T)).unwrap();
    c.set_write_timeout(Some(T)).unwrap();
    c
}

/// A TEJ frame (tej.md 1.2) with no files.
fn tej_frame(status: u8, msg: &[u8]) -> Vec<u8> {
    let mut v = vec![status | 0x80, 1];
    v.extend_from_slice(&0u64.to_be_bytes());
    v.extend_from_slice(&(msg.len() as u64).to_be_bytes());
    v.extend_from_slice(msg);
    v
}

/// Makes `c` a connection that a worker is serving and that then sits idle: one request
/// answered (JTP LIST with keep-alive, TEJ list request), then silence.
fn answered(proto: &str, mut c: TcpStream) -> TcpStream {
    match proto {
        "jtp" => c.write_all(&[0x01, 0x01]).unwrap(),
        _ => c.write_all(&tej_frame(5, b"")).unwrap(),
    }
    let mut first = [0u8; 1];
    c.read_exact(&mut first)
        .unwrap_or_else(|e| panic!("{proto}: no answer on a held connection within {T:?}: {e}"));
    c
}

/// Opens `n` held connections to each `(proto, addr)`: all connects first, from several
/// threads per listener at once (so the accept threads race each other), then one answered
/// request on each.
fn hold_many(targets: &[(&str, String)], n: usize) -> Vec<TcpStream> {
    const THREADS: usize = 5;
    let threads: Vec<_> = targets
        .iter()
        .flat_map(|(proto, addr)| {
            (0..THREADS).map(move |k| {
                let (proto, addr) = (proto.to_string(), addr.clone());
                let count = n / THREADS + usize::from(k < n % THREADS);
                thread::spawn(move || {
                    let conns: Vec<TcpStream> = (0..count).map(|_| connect(&addr)).collect();
                    conns
                        .into_iter()
                        .map(|c| answered(&proto, c))
                        .collect::<Vec<_>>()
                })
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
}

fn ok(o: &std::process::Output, what: &str) {
    assert!(
        o.status.success(),
        "{what}: {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// user + system CPU time of a process, in clock ticks (/proc/PID/stat fields 14 and 15).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Sockets a process holds open (each connection is one or two of them).
fn socket_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
        })
        .count()
}

/// Waits (up to `limit`) until `f` holds; returns how long that took.
fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        thread::sleep(Duration::from_millis(50));
    }
    t0.elapsed()
}

/// Issue 8: with 50 idle connections on each of the JTP and TEJ ports of `ferry serve`, a
/// real `ferry tej list` waited 27-29 s (the shared pool had lost workers to a race).
#[test]
fn idle_peers_on_every_listener_never_delay_a_real_client() {
    let dir = TempDir::new("core-idle");
    std::fs::write(dir.join("a.png"), pseudo_random(1, 5000)).unwrap();
    let s = serve_all(dir.path(), &[]);
    let (jtp, tej) = (s.addr("jtp"), s.addr("tej"));
    let idle = hold_many(&[("jtp", jtp.clone()), ("tej", tej.clone())], 50);
    assert_eq!(idle.len(), 100);
    let o = ferry(&["tej", "list", "--addr", &tej], T);
    ok(&o, "tej list");
    assert!(String::from_utf8_lossy(&o.stdout).contains("a.png"));
    let o = ferry(&["jtp", "list", "--no-tls", "--addr", &jtp], T);
    ok(&o, "jtp list");
    assert!(String::from_utf8_lossy(&o.stdout).contains("a.png"));
}

/// Issue 8: `--max-connections` was one budget for all listeners, so 50 idle TEJ connections
/// made JTP clients fail. Each listener has its own now.
#[test]
fn max_connections_is_a_budget_per_listener() {
    let dir = TempDir::new("core-budget");
    std::fs::write(dir.join("a.png"), pseudo_random(2, 5000)).unwrap();
    let s = serve_all(dir.path(), &["--max-connections", "4"]);
    let (jtp, tej) = (s.addr("jtp"), s.addr("tej"));
    let _idle = hold_many(&[("tej", tej.clone())], 4);
    // TEJ is full: a fifth connection gets its busy error frame at once.
    let mut c = connect(&tej);
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    assert!(
        String::from_utf8_lossy(&got).contains("busy"),
        "fifth TEJ connection: {got:02x?}"
    );
    // JTP has its own four places.
    let o = ferry(&["jtp", "list", "--no-tls", "--addr", &jtp], T);
    ok(&o, "jtp list beside 4 idle TEJ connections");
    assert!(String::from_utf8_lossy(&o.stdout).contains("a.png"));
}

/// Issue 8: a TLS client that stops reading held its connection (and worker) forever, since
/// rustls swallowed the write timeout; plain TCP was closed after `--io-timeout`. `request`
/// asks for `size` bytes; the peer reads a little, stops, and must be cut while `other` (a
/// real client) is still served.
fn stalled_tls_reader_is_cut(
    s: &Server,
    proto: &str,
    alpn: &[u8],
    request: &[u8],
    size: usize,
    cert: &Path,
    other: &[&str],
) {
    let addr = s.addr(proto);
    let pid = s.child.id();
    let baseline = socket_fds(pid);
    let client = TlsClient::new(Some(cert), &[alpn]).unwrap();
    let mut c: Stream = client
        .connect(connect_tcp(&addr, T).unwrap(), "localhost", T)
        .expect("handshake");
    c.write_all(request).unwrap();
    c.flush().unwrap();
    let mut head = vec![0u8; 64 * 1024];
    c.read_exact(&mut head).expect("the answer starts");
    // Stop reading. Others are served meanwhile.
    let stopped = Instant::now();
    let o = ferry(other, T);
    ok(&o, &format!("{other:?} beside a stalled TLS reader"));
    // The server closes the stalled connection (its sockets go) within a bounded time.
    let took = wait_for(
        &format!("{proto}-tls: the stalled connection closed by the server"),
        Duration::from_secs(30),
        || socket_fds(pid) <= baseline,
    );
    eprintln!(
        "{proto}-tls: stalled reader cut {:?} after it stopped reading ({took:?} after the other \
         client finished)",
        stopped.elapsed()
    );
    // What is left in the socket buffers ends early: the answer was cut, not finished.
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut total = head.len();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("{proto}-tls: still open after the server dropped it ({total} bytes)")
            }
            Err(_) => break,
        }
    }
    assert!(
        total < size,
        "{proto}-tls: {total} bytes of {size}: the stalled answer was finished, not cut"
    );
}

#[test]
fn jtp_tls_peer_that_stops_reading_is_cut_after_the_io_timeout() {
    let dir = TempDir::new("core-jtp-stall");
    let data = pseudo_random(3, 48 << 20);
    let id = ferry::proto::jtp::wire::image_id(&data);
    std::fs::write(dir.join("big.png"), &data).unwrap();
    drop(data);
    let d = dir.path().to_str().unwrap();
    let s = Server::start(
        &[
            "jtp",
            "serve",
            "--images",
            d,
            "--bind",
            "127.0.0.1:0",
            "--io-timeout",
            "2",
        ],
        1,
    );
    let cert = dir.join(".ferry/tls/cert.pem");
    let mut get = vec![0x00, 0x00, 0x01];
    get.extend_from_slice(&id.to_be_bytes());
    let (addr, c) = (s.addr("jtp"), cert.to_str().unwrap().to_string());
    stalled_tls_reader_is_cut(
        &s,
        "jtp",
        b"jtp/1",
        &get,
        48 << 20,
        &cert,
        &["jtp", "list", "--addr", &addr, "--cert", &c],
    );
}

#[test]
fn tej_tls_peer_that_stops_reading_is_cut_after_the_io_timeout() {
    let dir = TempDir::new("core-tej-stall");
    std::fs::write(dir.join("big.bin"), pseudo_random(4, 48 << 20)).unwrap();
    let d = dir.path().to_str().unwrap();
    let s = Server::start(
        &[
            "tej",
            "serve",
            "--tls",
            "--root",
            d,
            "--bind",
            "127.0.0.1:0",
            "--io-timeout",
            "2",
        ],
        1,
    );
    let cert = dir.join(".ferry/tls/cert.pem");
    let (addr, c) = (s.addr("tej"), cert.to_str().unwrap().to_string());
    stalled_tls_reader_is_cut(
        &s,
        "tej",
        b"tej/1",
        &tej_frame(4, br#"{"get":["big.bin"]}"#),
        48 << 20,
        &cert,
        &["tej", "list", "--tls", "--addr", &addr, "--cert", &c],
    );
}

/// Issue 8: after a burst of 600 connections, idle workers woke every 100 ms each and the
/// server burnt 20 % of a core forever. Nothing may poll when nothing happens: the CPU time of
/// an idle server after a burst stays flat (a few ticks at most for 3 s).
#[test]
fn an_idle_server_after_a_burst_uses_no_cpu() {
    let dir = TempDir::new("core-cpu");
    std::fs::write(dir.join("a.png"), pseudo_random(5, 5000)).unwrap();
    let s = serve_all(dir.path(), &[]);
    let pid = s.child.id();
    let baseline = socket_fds(pid);
    let burst = hold_many(&[("jtp", s.addr("jtp")), ("tej", s.addr("tej"))], 250);
    assert_eq!(burst.len(), 500);
    drop(burst);
    wait_for(
        "the burst's connections closed",
        Duration::from_secs(30),
        || socket_fds(pid) <= baseline,
    );
    let tick = Duration::from_secs(1);
    thread::sleep(tick);
    let before = cpu_ticks(pid);
    let mut samples = Vec::new();
    for _ in 0..3 {
        thread::sleep(tick);
        samples.push(cpu_ticks(pid) - before);
    }
    let used = samples[2];
    eprintln!("idle server after a burst of 500: CPU ticks over 3 s: {samples:?}");
    assert!(
        used < 5,
        "an idle server used {used} ticks of CPU in 3 s after a burst ({samples:?})"
    );
}
