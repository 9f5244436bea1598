//! Server-side limits a hostile peer pushes, on the JTP listener (the TEJ ones are in
//! `tej.rs`): the per-IP connection cap of `ferry serve` (issue 15 item 9) and the server-wide
//! budget of BATCH have-sets (issue 12).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::Duration;

use crate::harness::{pseudo_random, Server, TempDir};

const T: Duration = Duration::from_secs(20);

/// A TCP connection to `addr` from the loopback address `src` (127.0.0.x).
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

/// A folder with one image, served by `ferry ARGS` (plain JTP).
fn jtp_server(tag: &str, args: &[&str]) -> (TempDir, Server) {
    let dir = TempDir::new(tag);
    std::fs::write(dir.join("a.png"), pseudo_random(7, 3000)).unwrap();
    let d = dir.path().to_str().unwrap().to_string();
    let mut all: Vec<&str> = args.to_vec();
    let at = all.iter().position(|a| *a == "DIR").unwrap();
    all[at] = &d;
    let s = Server::start(&all, if args[0] == "serve" { 3 } else { 1 });
    (dir, s)
}

/// The first 5 bytes of a JTPE frame with `code`.
fn jtpe(code: u8) -> [u8; 5] {
    [0x4a, 0x54, 0x50, 0x45, code]
}

/// Issue 15 item 9 on `ferry serve`'s JTP listener: a quarter of --max-connections per
/// address by default; the next connection from it gets JTPE 3 at once, another address is
/// served.
#[test]
fn serve_caps_connections_per_address_on_jtp() {
    let (_d, s) = jtp_server(
        "limits-perip",
        &[
            "serve",
            "DIR",
            "--jtp-bind",
            "127.0.0.1:0",
            "--tej-bind",
            "127.0.0.1:0",
            "--cjp2p-bind",
            "127.0.0.1:0",
            "--no-tls",
            "--max-connections",
            "8",
        ],
    );
    let addr = s.addr("jtp");
    // Two held (LIST with keep-alive, answered, then idle).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = connect_from([127, 0, 0, 1], &addr);
        c.write_all(&[0x01, 0x01]).unwrap();
        let mut magic = [0u8; 4];
        c.read_exact(&mut magic).unwrap();
        assert_eq!(&magic, b"JTPL");
        held.push(c);
    }
    let mut third = connect_from([127, 0, 0, 1], &addr);
    let mut got = Vec::new();
    let _ = third.read_to_end(&mut got);
    assert!(
        got.starts_with(&jtpe(3)),
        "third from one address: {got:02x?}"
    );
    let mut other = connect_from([127, 0, 0, 2], &addr);
    other.write_all(&[0x01, 0x00]).unwrap();
    let mut magic = [0u8; 4];
    other.read_exact(&mut magic).unwrap();
    assert_eq!(&magic, b"JTPL", "another address is served");
}

/// Issue 12: BATCH have-sets are held under one server-wide budget (64 MiB: eight BATCHes of
/// 1,000,000 ids). Nine connections announce 1,000,000 ids each: eight are charged at their
/// count, before any id is read, and the ninth gets JTPE 3 `server busy` at once.
#[test]
fn batch_have_sets_beyond_the_server_budget_get_busy() {
    let (_d, s) = jtp_server(
        "limits-batch",
        &[
            "jtp",
            "serve",
            "--images",
            "DIR",
            "--bind",
            "127.0.0.1:0",
            "--no-tls",
            "--max-per-ip",
            "64",
        ],
    );
    let addr = s.addr("jtp");
    let (tx, rx) = mpsc::channel();
    let mut conns = Vec::new();
    for i in 0..9 {
        let mut c = connect_from([127, 0, 0, 1], &addr);
        // BATCH, keep-alive, HaveCount 1,000,000 (jtp.md's `02 00 c0843d`), no id yet.
        c.write_all(&[0x02, 0x01, 0xc0, 0x84, 0x3d]).unwrap();
        let (mut r, tx) = (c.try_clone().unwrap(), tx.clone());
        std::thread::spawn(move || {
            let mut got = [0u8; 5];
            let r = r.read_exact(&mut got).map(|()| got);
            let _ = tx.send((i, r.ok()));
        });
        conns.push(c);
    }
    let (i, got) = rx.recv_timeout(T).expect("one refusal");
    assert_eq!(got, Some(jtpe(3)), "connection {i}");
    // The eight others hold their place silently (their ids are still to come).
    assert!(rx.recv_timeout(Duration::from_millis(500)).is_err());
    // One of them sends its ids: it is answered (JTPB), and gives its share back.
    let k = (0..9).find(|&k| k != i).unwrap();
    let ids: Vec<u8> = (0..1_000_000u64).flat_map(|id| id.to_be_bytes()).collect();
    conns[k].write_all(&ids).unwrap();
    let (j, got) = rx.recv_timeout(T).expect("an answer");
    assert_eq!(
        (j, got.map(|g| g[..4].to_vec())),
        (k, Some(b"JTPB".to_vec()))
    );
    // Now a new BATCH of 1,000,000 fits again.
    let mut c = connect_from([127, 0, 0, 2], &addr);
    c.write_all(&[0x02, 0x00, 0xc0, 0x84, 0x3d]).unwrap();
    c.write_all(&ids).unwrap();
    let mut magic = [0u8; 4];
    c.read_exact(&mut magic).unwrap();
    assert_eq!(&magic, b"JTPB");
}
