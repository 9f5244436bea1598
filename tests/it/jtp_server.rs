//! End-to-end tests of `ferry jtp serve`: the real binary on loopback, spoken to in raw JTP bytes
//! over `std::net::TcpStream` (and rustls for J31). Each test is named after the checklist items
//! of `shared/specs/jtp.md` section 8 (or the section 4 row) it covers. Expected replies are built
//! from the files the test wrote, with ids from `twox_hash::XxHash64::oneshot(0, bytes)`, and
//! compared byte for byte. Every socket has read and write timeouts, so no test can hang.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use unicode_normalization::UnicodeNormalization;

use crate::harness::{pseudo_random, Server, TempDir};

/// Read/write timeout on every test socket: far above any server timeout used here.
const T: Duration = Duration::from_secs(15);
/// Most bytes a test reads from one connection (bounds memory if the server misbehaves).
const MAX_READ: usize = 256 << 20;

// ---------------------------------------------------------------------------------------------
// Wire model

fn xid(b: &[u8]) -> u64 {
    twox_hash::XxHash64::oneshot(0, b)
}

fn varint(mut v: u32) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

fn jtpe(code: u8, msg: &str) -> Vec<u8> {
    let mut v = b"JTPE".to_vec();
    v.push(code);
    v.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    v.extend_from_slice(msg.as_bytes());
    v
}

/// Type bits for a file name, `None` if JTP does not serve it.
fn type_of(name: &str) -> Option<u8> {
    let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match ext.as_str() {
        "png" => 0,
        "jpg" | "jpeg" => 1,
        "webp" => 2,
        "bmp" => 3,
        "gif" => 4,
        _ => return None,
    })
}

#[derive(Clone, Debug)]
struct Img {
    name: String,
    id: u64,
    flags: u8,
    /// Original size (the length of `data`, except for sparse test files).
    size: u64,
    data: Vec<u8>,
}

/// The catalog ferry should build from `files` (name as written, content): image extensions
/// only, NFC names, NFC byte order with ties by id, one entry per id (first by name).
fn model(files: &[(&str, &[u8])]) -> Vec<Img> {
    let mut v: Vec<Img> = files
        .iter()
        .filter(|(n, _)| !n.starts_with('.'))
        .filter_map(|(n, d)| {
            let name: String = n.nfc().collect();
            Some(Img {
                flags: type_of(&name)?,
                id: xid(d),
                size: d.len() as u64,
                name,
                data: d.to_vec(),
            })
        })
        .collect();
    v.sort_by(|a, b| {
        a.name
            .as_bytes()
            .cmp(b.name.as_bytes())
            .then(a.id.cmp(&b.id))
    });
    let mut seen = std::collections::HashSet::new();
    v.retain(|i| seen.insert(i.id));
    v
}

fn entry_bytes(i: &Img) -> Vec<u8> {
    let mut v = i.id.to_be_bytes().to_vec();
    v.push(i.flags);
    v.extend_from_slice(&(i.name.len() as u16).to_be_bytes());
    v.extend_from_slice(i.name.as_bytes());
    v.extend_from_slice(&varint(i.size as u32));
    v
}

fn raw_packet(i: &Img) -> Vec<u8> {
    let mut v = vec![i.flags];
    v.extend_from_slice(&varint(i.data.len() as u32));
    v.extend_from_slice(&i.id.to_be_bytes());
    v.extend_from_slice(&i.data);
    v
}

fn list_bytes(cat: &[Img]) -> Vec<u8> {
    let mut v = b"JTPL".to_vec();
    v.extend_from_slice(&varint(cat.len() as u32));
    for i in cat {
        v.extend_from_slice(&entry_bytes(i));
    }
    v
}

fn get_bytes(imgs: &[&Img]) -> Vec<u8> {
    let mut v = b"JTPD".to_vec();
    v.push(imgs.len() as u8);
    for i in imgs {
        v.extend_from_slice(&raw_packet(i));
    }
    v
}

fn packets_frame(magic: &[u8; 4], imgs: &[&Img]) -> Vec<u8> {
    let mut v = magic.to_vec();
    v.extend_from_slice(&varint(imgs.len() as u32));
    for i in imgs {
        v.extend_from_slice(&raw_packet(i));
    }
    v
}

fn get_request(keep_alive: bool, ids: &[u64]) -> Vec<u8> {
    let mut v = vec![0, keep_alive as u8, ids.len() as u8];
    for id in ids {
        v.extend_from_slice(&id.to_be_bytes());
    }
    v
}

fn batch_request(keep_alive: bool, have: &[u64]) -> Vec<u8> {
    let mut v = vec![2, keep_alive as u8];
    v.extend_from_slice(&varint(have.len() as u32));
    for id in have {
        v.extend_from_slice(&id.to_be_bytes());
    }
    v
}

fn watch_event(name_as_written: &str, data: &[u8]) -> Vec<u8> {
    let i = &model(&[(name_as_written, data)])[0];
    let mut v = b"JTPW".to_vec();
    v.extend_from_slice(&entry_bytes(i));
    v
}

/// A decoded packet.
struct Pkt {
    flags: u8,
    id: u64,
    data: Vec<u8>,
}

fn read_varint(b: &[u8], pos: &mut usize) -> u32 {
    let mut v: u64 = 0;
    for k in 0..5 {
        let byte = b[*pos];
        *pos += 1;
        v |= ((byte & 0x7f) as u64) << (7 * k);
        if byte & 0x80 == 0 {
            return u32::try_from(v).expect("varint above u32");
        }
    }
    panic!("over-long varint at {}", *pos - 5);
}

fn parse_packet(b: &[u8], pos: &mut usize) -> Pkt {
    let flags = b[*pos];
    *pos += 1;
    let len = read_varint(b, pos) as usize;
    let id = u64::from_be_bytes(b[*pos..*pos + 8].try_into().unwrap());
    *pos += 8;
    assert!(
        *pos + len <= b.len(),
        "packet {id:016x} cut: {len} bytes announced"
    );
    let data = b[*pos..*pos + len].to_vec();
    *pos += len;
    Pkt { flags, id, data }
}

/// Decodes one zstd frame with output capped at `cap` bytes and checks nothing follows it.
fn unzstd(frame: &[u8], cap: usize) -> Vec<u8> {
    let size = zstd::zstd_safe::find_frame_compressed_size(frame).expect("a zstd frame");
    assert_eq!(size, frame.len(), "bytes after the zstd frame");
    let mut d = zstd::stream::read::Decoder::new(frame)
        .unwrap()
        .single_frame();
    let mut out = Vec::new();
    (&mut d).take(cap as u64 + 1).read_to_end(&mut out).unwrap();
    assert!(out.len() <= cap, "zstd frame inflates beyond {cap} bytes");
    out
}

/// The packet's original bytes (decompressed when bit 3 is set), checked against its id.
fn packet_plain(p: &Pkt, cap: usize) -> Vec<u8> {
    assert_eq!(
        p.flags & 0xf0,
        0,
        "reserved packet flag bits set: {:02x}",
        p.flags
    );
    let plain = if p.flags & 0x08 != 0 {
        unzstd(&p.data, cap)
    } else {
        p.data.clone()
    };
    assert_eq!(xid(&plain), p.id, "packet bytes do not hash to its id");
    plain
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[track_caller]
fn assert_bytes(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let lo = at.saturating_sub(16);
    panic!(
        "{what}: {} bytes received, {} expected; first difference at offset {at}\n got: {}\nwant: {}",
        got.len(),
        want.len(),
        hex(&got[lo..got.len().min(at + 48)]),
        hex(&want[lo..want.len().min(at + 48)]),
    );
}

// ---------------------------------------------------------------------------------------------
// Files, server, sockets

fn put(dir: &Path, name: &str, data: &[u8]) {
    std::fs::write(dir.join(name), data).unwrap();
}

/// Writes every file of `files` into `dir`.
fn put_all(dir: &Path, files: &[(&str, &[u8])]) {
    for (n, d) in files {
        put(dir, n, d);
    }
}

/// Replaces `name` atomically (temporary dot-name, then rename), as an editor would.
fn replace(dir: &Path, name: &str, data: &[u8]) {
    let tmp = dir.join(format!(".tmp-{name}"));
    std::fs::write(&tmp, data).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// `ferry jtp serve --no-tls --bind 127.0.0.1:0 --images DIR` with short timeouts (2 s) unless
/// `extra` sets them.
fn serve(dir: &Path, extra: &[&str]) -> Server {
    let d = dir.to_str().unwrap();
    let mut args = vec!["jtp", "serve", "--bind", "127.0.0.1:0", "--images", d];
    if !extra.contains(&"--tls") {
        args.push("--no-tls");
    }
    if !extra.contains(&"--io-timeout") {
        args.extend_from_slice(&["--io-timeout", "2"]);
    }
    if !extra.contains(&"--keep-alive-timeout") {
        args.extend_from_slice(&["--keep-alive-timeout", "2"]);
    }
    args.extend(extra.iter().filter(|a| **a != "--tls"));
    Server::start(&args, 1)
}

fn connect(s: &Server) -> TcpStream {
    let c = TcpStream::connect(s.addr("jtp")).expect("connect");
    c.set_read_timeout(Some(T)).unwrap();
    c.set_write_timeout(Some(T)).unwrap();
    c
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Orderly close (FIN).
    Eof,
    /// Connection reset or another error.
    Reset(ErrorKind),
    /// Nothing arrived for the socket's read timeout.
    Timeout,
    /// `MAX_READ` reached.
    Full,
}

/// Reads until the peer closes, the read timeout fires or `MAX_READ` bytes arrived.
fn read_until_end(c: &mut TcpStream) -> (Vec<u8>, End) {
    let mut v = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        if v.len() >= MAX_READ {
            return (v, End::Full);
        }
        match c.read(&mut buf) {
            Ok(0) => return (v, End::Eof),
            Ok(n) => v.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (v, End::Timeout)
            }
            Err(e) => return (v, End::Reset(e.kind())),
        }
    }
}

/// Reads to an orderly close and returns everything received.
#[track_caller]
fn read_to_close(c: &mut TcpStream) -> Vec<u8> {
    let (v, end) = read_until_end(c);
    assert_eq!(
        end,
        End::Eof,
        "connection did not end in an orderly close after {} bytes: {}",
        v.len(),
        hex(&v[..v.len().min(64)])
    );
    v
}

#[track_caller]
fn read_n(c: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    c.read_exact(&mut v)
        .unwrap_or_else(|e| panic!("reading {n} bytes: {e}"));
    v
}

/// Asserts that nothing arrives on `c` for `wait` (the connection stays open and silent).
#[track_caller]
fn assert_silent(c: &mut TcpStream, wait: Duration) {
    c.set_read_timeout(Some(wait)).unwrap();
    let mut b = [0u8; 64];
    match c.read(&mut b) {
        Ok(0) => panic!("connection closed, expected it to stay open"),
        Ok(n) => panic!("unexpected bytes: {}", hex(&b[..n])),
        Err(e) => assert!(
            matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "unexpected error {e}"
        ),
    }
    c.set_read_timeout(Some(T)).unwrap();
}

/// One connection: write `req` in one write, read to the close.
#[track_caller]
fn exchange(s: &Server, req: &[u8]) -> Vec<u8> {
    let mut c = connect(s);
    c.write_all(req).unwrap();
    read_to_close(&mut c)
}

#[track_caller]
fn expect_reply(s: &Server, req: &[u8], want: &[u8]) {
    let got = exchange(s, req);
    assert_bytes(
        &got,
        want,
        &format!("reply to {}", hex(&req[..req.len().min(32)])),
    );
}

/// The server process's resident set size in KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// A small catalog of three PNGs with incompressible content.
fn small_files() -> Vec<(String, Vec<u8>)> {
    vec![
        ("alpha.png".into(), pseudo_random(1, 9332)),
        ("beta.png".into(), pseudo_random(2, 90243)),
        ("gamma.jpg".into(), pseudo_random(3, 1000)),
    ]
}

fn as_refs(f: &[(String, Vec<u8>)]) -> Vec<(&str, &[u8])> {
    f.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect()
}

/// A folder holding `small_files()`, its model and a running server.
fn small_server(tag: &str, extra: &[&str]) -> (TempDir, Vec<Img>, Server) {
    let dir = TempDir::new(tag);
    let files = small_files();
    put_all(dir.path(), &as_refs(&files));
    let cat = model(&as_refs(&files));
    let s = serve(dir.path(), extra);
    (dir, cat, s)
}

/// `n` files of `size` pseudo-random bytes named `f0000.png`...
fn many_files(dir: &Path, n: usize, size: usize) -> Vec<Img> {
    let files: Vec<(String, Vec<u8>)> = (0..n)
        // pseudo_random ignores bit 0 of the seed: odd seeds only.
        .map(|k| {
            (
                format!("f{k:04}.png"),
                pseudo_random(2001 + 2 * k as u64, size),
            )
        })
        .collect();
    put_all(dir, &as_refs(&files));
    model(&as_refs(&files))
}

/// A sparse file of `len` zero bytes (served raw with `--compression-threshold 0`).
fn sparse(dir: &Path, name: &str, len: u64) -> Img {
    let f = std::fs::File::create(dir.join(name)).unwrap();
    f.set_len(len).unwrap();
    let mut h = twox_hash::XxHash64::with_seed(0);
    let zeros = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        std::hash::Hasher::write(&mut h, &zeros[..n]);
        left -= n as u64;
    }
    Img {
        name: name.into(),
        id: std::hash::Hasher::finish(&h),
        flags: type_of(name).unwrap(),
        size: len,
        data: Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Section 2 and 4: bad requests

#[test]
fn j2_malformed_varints_get_jtpe2_malformed_varint() {
    let (_d, _cat, s) = small_server("j2", &[]);
    for req in [
        &b"\x02\x00\xff\xff\xff\xff\xff\x7f"[..], // 6 bytes
        &b"\x02\x00\x80\x80\x80\x80\x10"[..],     // above u32
        &b"\x02\x00\x80\x00"[..],                 // non-minimal
        &b"\x02\x01\x80\x80\x80\x80\x80"[..],     // 5th byte with 0x80
    ] {
        expect_reply(&s, req, &jtpe(2, "malformed varint"));
    }
}

#[test]
fn j4_reserved_request_flags_get_jtpe2_before_the_type() {
    let (_d, _cat, s) = small_server("j4", &[]);
    for req in [
        &[0x01, 0x02][..],
        &[0x00, 0xff],
        &[0xff, 0x02],
        &[0x07, 0x80],
        &[0x03, 0x02],
        // Each reserved bit alone (issue 16: checking bits 1 and 7 only passed the rows above).
        &[0x01, 0x04],
        &[0x01, 0x08],
        &[0x01, 0x10],
        &[0x01, 0x20],
        &[0x01, 0x40],
        &[0x01, 0x80],
        &[0x01, 0x05],
    ] {
        expect_reply(&s, req, &jtpe(2, "reserved flags set"));
    }
}

#[test]
fn table_tls_client_hello_on_plain_port_gets_reserved_flags_set() {
    let (_d, _cat, s) = small_server("hello", &[]);
    // The start of a real TLS record carrying a ClientHello.
    let mut hello = vec![
        0x16, 0x03, 0x01, 0x00, 0xc4, 0x01, 0x00, 0x00, 0xc0, 0x03, 0x03,
    ];
    hello.extend_from_slice(&pseudo_random(7, 32));
    expect_reply(&s, &hello, &jtpe(2, "reserved flags set"));
}

#[test]
fn j5_reserved_request_types_get_jtpe4_unknown_request_type() {
    let (_d, _cat, s) = small_server("j5", &[]);
    for t in [0x06u8, 0x07, 0x10, 0x7f, 0x80, 0xfe, 0xff] {
        expect_reply(&s, &[t, 0x00], &jtpe(4, "unknown request type"));
        expect_reply(&s, &[t, 0x01], &jtpe(4, "unknown request type"));
    }
}

// ---------------------------------------------------------------------------------------------
// Section 3.2: what each request returns

#[test]
fn j6_list_entries_in_catalog_order_with_nfc_names_types_and_sizes() {
    let dir = TempDir::new("j6");
    let a = pseudo_random(1, 9332);
    let b = pseudo_random(2, 90243);
    let c = pseudo_random(3, 200);
    let d = pseudo_random(4, 0x1_0000);
    let e = pseudo_random(5, 17);
    let files: Vec<(&str, &[u8])> = vec![
        ("beta.png", &b),
        ("alpha.png", &a),
        ("cafe\u{301}.webp", &c),
        ("Zebra.GIF", &d),
        ("pic.jpeg", &e),
    ];
    put_all(dir.path(), &files);
    let cat = model(&files);
    assert_eq!(cat[0].name, "Zebra.GIF");
    let s = serve(dir.path(), &[]);
    expect_reply(&s, &[0x01, 0x00], &list_bytes(&cat));
    // The spec's own example entries.
    let l = exchange(&s, &[0x01, 0x00]);
    assert!(l.windows(9).any(|w| w == b"alpha.png"));
    let alpha = &cat.iter().find(|i| i.name == "alpha.png").unwrap();
    assert!(hex(&entry_bytes(alpha)).ends_with("0009616c7068612e706e67f448"));
}

#[test]
fn j6_empty_catalog_lists_exactly_4a54504c00() {
    let dir = TempDir::new("j6e");
    let s = serve(dir.path(), &[]);
    expect_reply(&s, &[0x01, 0x00], &[0x4a, 0x54, 0x50, 0x4c, 0x00]);
    expect_reply(&s, &[0x05, 0x00], b"JTPG\x00");
    expect_reply(&s, &[0x02, 0x00, 0x00], b"JTPB\x00");
}

#[test]
fn j6_list_count_above_127_is_a_two_byte_varint() {
    let dir = TempDir::new("j6n");
    let cat = many_files(dir.path(), 200, 100);
    let s = serve(dir.path(), &[]);
    let l = exchange(&s, &[0x01, 0x00]);
    assert_eq!(&l[..6], b"JTPL\xc8\x01");
    assert_bytes(&l, &list_bytes(&cat), "LIST of 200");
}

#[test]
fn j7_get_by_id_request_order_skips_unknown_repeats_duplicates() {
    let (_d, cat, s) = small_server("j7", &[]);
    let (a, b, g) = (&cat[0], &cat[1], &cat[2]);
    let unknown = 0x0123_4567_89ab_cdefu64;
    expect_reply(
        &s,
        &get_request(false, &[g.id, unknown, a.id, g.id, b.id]),
        &get_bytes(&[g, a, g, b]),
    );
    expect_reply(&s, &[0x00, 0x00, 0x00], &[0x4a, 0x54, 0x50, 0x44, 0x00]);
    expect_reply(&s, &get_request(false, &[unknown]), b"JTPD\x00");
}

#[test]
fn j7_get_of_255_ids_is_served() {
    let (_d, cat, s) = small_server("j7m", &[]);
    let ids: Vec<u64> = (0..255).map(|k| cat[k % 3].id).collect();
    let want: Vec<&Img> = (0..255).map(|k| &cat[k % 3]).collect();
    expect_reply(&s, &get_request(false, &ids), &get_bytes(&want));
}

#[test]
fn j8_batch_sends_missing_images_in_catalog_order() {
    let (_d, cat, s) = small_server("j8", &[]);
    let (a, b, g) = (&cat[0], &cat[1], &cat[2]);
    let unknown = 0xfeed_0000_0000_0001u64;
    expect_reply(
        &s,
        &batch_request(false, &[b.id, unknown, b.id]),
        &packets_frame(b"JTPB", &[a, g]),
    );
    expect_reply(
        &s,
        &batch_request(false, &[]),
        &packets_frame(b"JTPB", &[a, b, g]),
    );
    expect_reply(
        &s,
        &batch_request(false, &[g.id, b.id, a.id]),
        &[0x4a, 0x54, 0x50, 0x42, 0x00],
    );
}

#[test]
fn j9_have_count_above_a_million_is_refused_before_any_id() {
    let (_d, _cat, s) = small_server("j9", &[]);
    // No id is sent: the reply must come from the count alone.
    expect_reply(
        &s,
        &[0x02, 0x00, 0xc1, 0x84, 0x3d],
        &jtpe(2, "have_count too large"),
    );
    expect_reply(
        &s,
        &[0x02, 0x00, 0xff, 0xff, 0xff, 0xff, 0x0f],
        &jtpe(2, "have_count too large"),
    );
}

#[test]
fn j9_have_count_of_exactly_a_million_is_accepted() {
    let (_d, cat, s) = small_server("j9ok", &["--io-timeout", "10"]);
    let mut req = vec![0x02, 0x00, 0xc0, 0x84, 0x3d];
    req.reserve(8_000_000);
    for k in 0..1_000_000u64 {
        let id = if k == 500_000 {
            cat[1].id
        } else {
            k.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        };
        req.extend_from_slice(&id.to_be_bytes());
    }
    let mut c = connect(&s);
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&req));
    let got = read_to_close(&mut c);
    writer.join().unwrap().unwrap();
    assert_bytes(
        &got,
        &packets_frame(b"JTPB", &[&cat[0], &cat[2]]),
        "BATCH of 1,000,000 ids",
    );
}

#[test]
fn j10_batch_announcing_a_million_ids_sending_none_is_bounded_and_timed_out() {
    let (_d, _cat, s) = small_server("j10", &[]);
    let pid = s.child.id();
    let before = rss_kib(pid);
    let start = Instant::now();
    let mut conns: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut c = connect(&s);
            c.write_all(&[0x02, 0x00, 0xc0, 0x84, 0x3d]).unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1000));
    let during = rss_kib(pid);
    for c in &mut conns {
        let got = read_to_close(c);
        assert_bytes(&got, &jtpe(2, "request timed out"), "stalled BATCH body");
    }
    let took = start.elapsed();
    let after = rss_kib(pid);
    eprintln!(
        "VmRSS before {before} KiB, during {during} KiB, after {after} KiB; closed after {took:?}"
    );
    // The reference would reserve 8 MB per connection (64 MB here).
    assert!(
        during < before + 16 * 1024,
        "RSS grew from {before} to {during} KiB"
    );
    assert!(
        after < before + 16 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
    assert!(
        took < Duration::from_secs(12),
        "body timeout took {took:?} with --io-timeout 2"
    );
}

#[test]
fn j11_list_and_get_sends_every_image_in_catalog_order() {
    let (_d, cat, s) = small_server("j11", &[]);
    let all: Vec<&Img> = cat.iter().collect();
    expect_reply(&s, &[0x05, 0x00], &packets_frame(b"JTPG", &all));
}

#[test]
fn j11_list_and_get_of_300_images() {
    let dir = TempDir::new("j11m");
    let cat = many_files(dir.path(), 300, 1000);
    let s = serve(dir.path(), &[]);
    let all: Vec<&Img> = cat.iter().collect();
    expect_reply(&s, &[0x05, 0x00], &packets_frame(b"JTPG", &all));
}

#[test]
fn j12_packets_carry_type_of_extension_and_clear_reserved_bits() {
    let dir = TempDir::new("j12");
    let names = [
        "a.png", "b.jpg", "c.jpeg", "d.webp", "e.bmp", "f.gif", "G.PNG", "h.JpG", "i.BMP",
    ];
    let datas: Vec<Vec<u8>> = (0..names.len())
        .map(|k| pseudo_random(50 + k as u64, 3000 + k))
        .collect();
    let files: Vec<(&str, &[u8])> = names
        .iter()
        .copied()
        .zip(datas.iter().map(|d| d.as_slice()))
        .collect();
    put_all(dir.path(), &files);
    let cat = model(&files);
    let s = serve(dir.path(), &[]);
    let got = exchange(&s, &[0x05, 0x00]);
    assert_eq!(&got[..4], b"JTPG");
    let mut pos = 4;
    assert_eq!(read_varint(&got, &mut pos) as usize, cat.len());
    for want in &cat {
        let p = parse_packet(&got, &mut pos);
        assert_eq!(p.id, want.id, "catalog order");
        assert_eq!(p.flags & 0x07, want.flags, "type bits of {}", want.name);
        assert_eq!(packet_plain(&p, want.data.len()), want.data);
    }
    assert_eq!(pos, got.len(), "bytes after the last packet");
}

// ---------------------------------------------------------------------------------------------
// Compression

fn bmp_like(len: usize) -> Vec<u8> {
    // A BMP-ish header and a repetitive body: compresses well.
    let mut v = b"BM".to_vec();
    let mut k = 0u32;
    while v.len() < len {
        v.extend_from_slice(&[(k % 7) as u8, 0x40, 0x80, (k / 512 % 256) as u8]);
        k += 1;
    }
    v.truncate(len);
    v
}

#[test]
fn j13_compressible_bmp_is_one_zstd_frame_hashing_to_its_id() {
    let dir = TempDir::new("j13");
    let bmp = bmp_like(360_054);
    let noise = pseudo_random(9, 50_000);
    put(dir.path(), "pic.bmp", &bmp);
    put(dir.path(), "noise.bmp", &noise);
    let cat = model(&[("pic.bmp", &bmp), ("noise.bmp", &noise)]);
    let s = serve(dir.path(), &[]);
    // LIST Size is the original size, flags type-only.
    expect_reply(&s, &[0x01, 0x00], &list_bytes(&cat));
    let pic = cat.iter().find(|i| i.name == "pic.bmp").unwrap();
    let noise_img = cat.iter().find(|i| i.name == "noise.bmp").unwrap();
    // The compressed form may still be building on the first requests.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = exchange(&s, &get_request(false, &[pic.id, noise_img.id]));
        assert_eq!(&got[..5], b"JTPD\x02");
        let mut pos = 5;
        let p = parse_packet(&got, &mut pos);
        assert_eq!(p.id, pic.id);
        assert_eq!(packet_plain(&p, bmp.len()), bmp);
        // Incompressible data is never sent compressed (ratio above the threshold).
        let q = parse_packet(&got, &mut pos);
        assert_bytes(
            &got[pos - raw_packet(noise_img).len()..pos],
            &raw_packet(noise_img),
            "noise.bmp packet",
        );
        assert_eq!(q.flags, 0x03);
        assert_eq!(pos, got.len());
        if p.flags == 0x0b {
            assert!(p.data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]), "zstd magic");
            assert!(p.data.len() < bmp.len() * 95 / 100);
            break;
        }
        assert_eq!(p.flags, 0x03, "raw BMP packet flags");
        assert!(
            Instant::now() < deadline,
            "pic.bmp was never sent compressed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The same frame inside BATCH and LIST_AND_GET.
    let got = exchange(&s, &[0x05, 0x00]);
    let mut pos = 5;
    let mut seen = 0;
    while pos < got.len() {
        let p = parse_packet(&got, &mut pos);
        let want = cat.iter().find(|i| i.id == p.id).unwrap();
        assert_eq!(packet_plain(&p, want.data.len()), want.data);
        seen += 1;
    }
    assert_eq!(seen, 2);
}

#[test]
fn j14_compression_threshold_0_sends_everything_raw() {
    let dir = TempDir::new("j14");
    let bmp = bmp_like(360_054);
    let zeros = vec![0u8; 100_000];
    put(dir.path(), "pic.bmp", &bmp);
    put(dir.path(), "zeros.png", &zeros);
    let cat = model(&[("pic.bmp", &bmp), ("zeros.png", &zeros)]);
    let s = serve(dir.path(), &["--compression-threshold", "0"]);
    let all: Vec<&Img> = cat.iter().collect();
    // Several rounds: no background compressor may change the answer.
    for _ in 0..5 {
        expect_reply(&s, &[0x05, 0x00], &packets_frame(b"JTPG", &all));
        expect_reply(
            &s,
            &get_request(false, &[cat[0].id, cat[1].id]),
            &get_bytes(&all),
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

// ---------------------------------------------------------------------------------------------
// Connection life, pipelining, timeouts

#[test]
fn j15_keep_alive_bit_decides_per_request() {
    let (_d, cat, s) = small_server("j15", &[]);
    let list = list_bytes(&cat);
    expect_reply(&s, &[0x01, 0x00], &list);
    let mut c = connect(&s);
    c.write_all(&[0x01, 0x01]).unwrap();
    assert_bytes(&read_n(&mut c, list.len()), &list, "first LIST");
    c.write_all(&get_request(true, &[cat[1].id])).unwrap();
    let g = get_bytes(&[&cat[1]]);
    assert_bytes(&read_n(&mut c, g.len()), &g, "keep-alive GET");
    c.write_all(&[0x01, 0x00]).unwrap();
    assert_bytes(&read_to_close(&mut c), &list, "last LIST, then close");
}

#[test]
fn j16_two_pipelined_lists_in_one_write_then_close() {
    let (_d, cat, s) = small_server("j16", &[]);
    let list = list_bytes(&cat);
    expect_reply(
        &s,
        &[0x01, 0x01, 0x01, 0x00],
        &[list.clone(), list].concat(),
    );
}

#[test]
fn table_extra_bytes_after_a_non_keep_alive_request_get_the_full_response() {
    let (_d, cat, s) = small_server("extra", &[]);
    let all: Vec<&Img> = cat.iter().collect();
    let mut req = vec![0x05, 0x00];
    req.extend_from_slice(&[0x01, 0x00, 0xff, 0xff, 0x42]);
    req.extend_from_slice(&pseudo_random(3, 4000));
    expect_reply(&s, &req, &packets_frame(b"JTPG", &all));
}

#[test]
fn j17_idle_past_keep_alive_timeout_closes_silently() {
    let (_d, cat, s) = small_server("j17", &[]);
    let list = list_bytes(&cat);
    let mut c = connect(&s);
    c.write_all(&[0x01, 0x01]).unwrap();
    assert_bytes(&read_n(&mut c, list.len()), &list, "LIST");
    let t = Instant::now();
    let rest = read_to_close(&mut c);
    assert_bytes(&rest, b"", "bytes after idling");
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "closed after {:?}, keep-alive 2 s",
        t.elapsed()
    );
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "closed after {:?}",
        t.elapsed()
    );
}

#[test]
fn j17_silence_before_the_first_request_closes_silently() {
    // The first-request timeout is 60 s and has no flag, so this test takes a minute (the
    // deadline itself is pinned with explicit times in the driver's unit tests). The server
    // starts its clock after this connect returns, so it cannot close before 60 s here.
    let (_d, cat, s) = small_server("j17f", &[]);
    let mut c = connect(&s);
    c.set_read_timeout(Some(Duration::from_secs(80))).unwrap();
    let t = Instant::now();
    let (got, end) = read_until_end(&mut c);
    assert_eq!(end, End::Eof, "after {:?}", t.elapsed());
    assert_bytes(&got, b"", "bytes before any request");
    assert!(
        t.elapsed() >= Duration::from_secs(59),
        "closed after {:?}: the first-request timeout is 60 s",
        t.elapsed()
    );
    // The server is fine.
    expect_reply(&s, &[0x01, 0x00], &list_bytes(&cat));
}

#[test]
fn j18_stalled_body_times_out_while_others_are_served() {
    let (_d, cat, s) = small_server("j18", &[]);
    let mut stalled = connect(&s);
    let t = Instant::now();
    stalled.write_all(&[0x00, 0x00, 0x05]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Another client meanwhile.
    let t2 = Instant::now();
    expect_reply(&s, &[0x01, 0x00], &list_bytes(&cat));
    expect_reply(
        &s,
        &get_request(false, &[cat[0].id]),
        &get_bytes(&[&cat[0]]),
    );
    assert!(
        t2.elapsed() < Duration::from_secs(2),
        "other client waited {:?}",
        t2.elapsed()
    );
    let got = read_to_close(&mut stalled);
    let took = t.elapsed();
    assert_bytes(&got, &jtpe(2, "request timed out"), "stalled GET body");
    assert!(
        took >= Duration::from_millis(1500),
        "timed out after {took:?}, io-timeout 2 s"
    );
    assert!(
        took < Duration::from_secs(10),
        "timed out after {took:?}, io-timeout 2 s"
    );
}

#[test]
fn table_one_header_byte_then_eof_and_body_cut_by_eof_close_silently() {
    let (_d, cat, s) = small_server("eof", &[]);
    for req in [&[0x01][..], &[0x00, 0x00, 0x03, 1, 2, 3, 4, 5, 6, 7, 8][..]] {
        let mut c = connect(&s);
        c.write_all(req).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let (got, end) = read_until_end(&mut c);
        assert_bytes(&got, b"", "reply to a cut request");
        assert_ne!(end, End::Timeout);
    }
    expect_reply(&s, &[0x01, 0x00], &list_bytes(&cat));
}

#[test]
fn j19_client_that_stops_reading_is_dropped_others_served() {
    let dir = TempDir::new("j19");
    let big = sparse(dir.path(), "big.png", 64 << 20);
    let small = pseudo_random(4, 5000);
    put(dir.path(), "small.png", &small);
    let s = serve(dir.path(), &["--compression-threshold", "0", "-v"]);
    let mut c = connect(&s);
    let me = c.local_addr().unwrap();
    c.write_all(&get_request(false, &[big.id])).unwrap();
    let head = read_n(&mut c, 4096);
    assert_eq!(&head[..5], b"JTPD\x01");
    // Stop reading. Meanwhile others are served.
    let small_img = &model(&[("small.png", &small)])[0];
    for _ in 0..3 {
        expect_reply(
            &s,
            &get_request(false, &[small_img.id]),
            &get_bytes(&[small_img]),
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Still not reading until the server has given up on this client (io-timeout 2 s): its
    // log ends the connection with its i/o error (`jtp: PEER: failed after ...: i/o: ...`).
    let gave_up = format!("jtp: {me}: failed after");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !s.stderr_text().contains(&gave_up) {
        assert!(
            Instant::now() < deadline,
            "the server kept the stalled client for 30 s: {}",
            s.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = s.stderr_text();
    let line = log.lines().find(|l| l.contains(&gave_up)).unwrap();
    assert!(line.contains("i/o: timed out"), "{line}");
    let (rest, end) = read_until_end(&mut c);
    let total = 4096 + rest.len();
    let full = 5 + 1 + varint(64 << 20).len() + 8 + (64 << 20);
    assert!(
        total < full,
        "the stalled client got the whole response ({total} bytes)"
    );
    assert_ne!(
        end,
        End::Timeout,
        "connection still open after {total} bytes"
    );
    assert!(s.stderr_text().len() < 1 << 20);
    // The server still answers LIST (big.png listed with its original size).
    let mut want = b"JTPL\x02".to_vec();
    want.extend_from_slice(&entry_bytes(&big));
    want.extend_from_slice(&entry_bytes(small_img));
    expect_reply(&s, &[0x01, 0x00], &want);
}

// ---------------------------------------------------------------------------------------------
// CANCEL, pipelining during responses

#[test]
fn j20_cancel_after_a_keep_alive_request_gets_jtpc_then_list_is_served() {
    let (_d, cat, s) = small_server("j20", &[]);
    let mut c = connect(&s);
    c.write_all(&get_request(true, &[cat[0].id])).unwrap();
    let g = get_bytes(&[&cat[0]]);
    assert_bytes(&read_n(&mut c, g.len()), &g, "GET");
    c.write_all(&[0x03, 0x00]).unwrap();
    assert_bytes(&read_n(&mut c, 4), b"JTPC", "CANCEL ack");
    c.write_all(&[0x01, 0x00]).unwrap();
    assert_bytes(
        &read_to_close(&mut c),
        &list_bytes(&cat),
        "LIST after CANCEL",
    );
}

#[test]
fn j21_cancel_as_first_request_gets_jtpe2() {
    let (_d, _cat, s) = small_server("j21", &[]);
    let want = jtpe(2, "CANCEL requires an active keep-alive connection");
    expect_reply(&s, &[0x03, 0x00], &want);
    // The keep-alive bit does not sneak it past the rule (reference bug 7.5).
    expect_reply(&s, &[0x03, 0x01], &want);
    // Nor does a pipelined request behind it.
    expect_reply(&s, &[0x03, 0x00, 0x01, 0x00], &want);
}

#[test]
fn j22_cancel_with_keep_alive_bit_is_accepted_as_cancel() {
    let (_d, cat, s) = small_server("j22", &[]);
    let list = list_bytes(&cat);
    let mut c = connect(&s);
    c.write_all(&[0x01, 0x01]).unwrap();
    assert_bytes(&read_n(&mut c, list.len()), &list, "LIST");
    c.write_all(&[0x03, 0x01]).unwrap();
    assert_bytes(&read_n(&mut c, 4), b"JTPC", "ack of 03 01");
    c.write_all(&[0x01, 0x00]).unwrap();
    assert_bytes(&read_to_close(&mut c), &list, "LIST after 03 01");
}

#[test]
fn j22_watch_with_keep_alive_bit_is_accepted_as_watch() {
    let (_d, cat, s) = small_server("j22w", &["--watch-interval", "1"]);
    let mut c = connect(&s);
    c.write_all(&[0x04, 0x01]).unwrap();
    assert_silent(&mut c, Duration::from_millis(2500));
    c.write_all(&[0x03, 0x00]).unwrap();
    assert_bytes(&read_n(&mut c, 4), b"JTPC", "ack of CANCEL during WATCH");
    c.write_all(&[0x01, 0x00]).unwrap();
    assert_bytes(
        &read_to_close(&mut c),
        &list_bytes(&cat),
        "LIST after WATCH",
    );
}

/// A catalog of 300 images of 64 KiB: long responses for the mid-stream tests.
fn long_server(tag: &str) -> (TempDir, Vec<Img>, Server) {
    let dir = TempDir::new(tag);
    let cat = many_files(dir.path(), 300, 64 << 10);
    let s = serve(dir.path(), &[]);
    (dir, cat, s)
}

/// Checks `MAGIC count packet* JTPC` at the start of `got` (packets must follow `order`, at most
/// the count) and returns (count, packets seen, bytes after the JTPC).
#[track_caller]
fn split_cancelled<'a>(got: &'a [u8], magic: &[u8; 4], order: &[&Img]) -> (usize, usize, &'a [u8]) {
    assert_eq!(&got[..4], magic, "magic");
    let mut pos = 4;
    let m = if magic == b"JTPD" {
        pos += 1;
        got[4] as usize
    } else {
        read_varint(got, &mut pos) as usize
    };
    assert_eq!(m, order.len(), "count");
    let mut k = 0;
    while got.get(pos) != Some(&b'J') {
        assert!(
            pos < got.len(),
            "response ended without JTPC after {k} packets"
        );
        assert!(k < m, "more packets than counted");
        let p = parse_packet(got, &mut pos);
        assert_eq!(p.id, order[k].id, "packet {k} out of order");
        assert_eq!(packet_plain(&p, order[k].data.len()), order[k].data);
        k += 1;
    }
    assert_bytes(&got[pos..pos + 4], b"JTPC", "frame after the packets");
    (m, k, &got[pos + 4..])
}

#[test]
fn j23_cancel_mid_get_batch_list_and_get_in_one_write() {
    let (_d, cat, s) = long_server("j23");
    let list = list_bytes(&cat);
    let ids: Vec<u64> = cat.iter().rev().take(255).map(|i| i.id).collect();
    let get_order: Vec<&Img> = cat.iter().rev().take(255).collect();
    let all: Vec<&Img> = cat.iter().collect();
    let cases: Vec<(Vec<u8>, &[u8; 4], &[&Img])> = vec![
        (get_request(true, &ids), b"JTPD", &get_order),
        (batch_request(true, &[]), b"JTPB", &all),
        (vec![0x05, 0x01], b"JTPG", &all),
    ];
    for (req, magic, order) in cases {
        let mut c = connect(&s);
        let mut w = req.clone();
        w.extend_from_slice(&[0x03, 0x00, 0x01, 0x00]);
        c.write_all(&w).unwrap();
        let got = read_to_close(&mut c);
        let (m, k, rest) = split_cancelled(&got, magic, order);
        eprintln!(
            "{}: {k} of {m} packets before JTPC",
            String::from_utf8_lossy(magic)
        );
        assert_bytes(rest, &list, "LIST after the cancelled response");
    }
}

#[test]
fn j23_cancel_arriving_mid_stream_stops_between_packets() {
    let (_d, cat, s) = long_server("j23s");
    let list = list_bytes(&cat);
    let ids: Vec<u64> = cat.iter().take(255).map(|i| i.id).collect();
    let get_order: Vec<&Img> = cat.iter().take(255).collect();
    let all: Vec<&Img> = cat.iter().collect();
    let cases: Vec<(Vec<u8>, &[u8; 4], &[&Img])> = vec![
        (get_request(true, &ids), b"JTPD", &get_order),
        (batch_request(true, &[]), b"JTPB", &all),
        (vec![0x05, 0x01], b"JTPG", &all),
    ];
    for (req, magic, order) in cases {
        let mut c = connect(&s);
        c.write_all(&req).unwrap();
        let mut got = read_n(&mut c, 1 << 20);
        c.write_all(&[0x03, 0x00, 0x01, 0x00]).unwrap();
        got.extend_from_slice(&read_to_close(&mut c));
        let (m, k, rest) = split_cancelled(&got, magic, order);
        eprintln!(
            "{}: {k} of {m} packets before JTPC",
            String::from_utf8_lossy(magic)
        );
        assert!(
            k < m,
            "CANCEL after 1 MiB of 19 MiB did not stop the response"
        );
        assert_bytes(rest, &list, "LIST after the cancelled response");
    }
}

#[test]
fn j24_pipelined_request_during_a_response_is_answered_after_it() {
    let (_d, cat, s) = long_server("j24");
    let list = list_bytes(&cat);
    let all: Vec<&Img> = cat.iter().collect();
    let lag = packets_frame(b"JTPG", &all);
    // In the same write.
    expect_reply(
        &s,
        &[0x05, 0x01, 0x01, 0x00],
        &[lag.clone(), list.clone()].concat(),
    );
    // Arriving while the response streams.
    let mut c = connect(&s);
    c.write_all(&[0x05, 0x01]).unwrap();
    let mut got = read_n(&mut c, 1 << 20);
    c.write_all(&[0x01, 0x00]).unwrap();
    got.extend_from_slice(&read_to_close(&mut c));
    assert_bytes(
        &got,
        &[lag.clone(), list.clone()].concat(),
        "JTPG then JTPL",
    );
    // A lone 03 (its 00 still in flight) is not eaten either.
    let mut c = connect(&s);
    c.write_all(&[0x05, 0x01, 0x03]).unwrap();
    let mut got = read_n(&mut c, lag.len());
    assert_bytes(&got, &lag, "JTPG with a lone 03 behind it");
    c.write_all(&[0x00, 0x01, 0x00]).unwrap();
    got = read_to_close(&mut c);
    assert_bytes(&got, &[b"JTPC".to_vec(), list].concat(), "JTPC then JTPL");
}

#[test]
fn j25_every_cancel_on_keep_alive_gets_exactly_one_jtpc() {
    let (_d, cat, s) = small_server("j25", &[]);
    let list = list_bytes(&cat);
    let mut c = connect(&s);
    c.write_all(&[0x01, 0x01, 0x03, 0x00]).unwrap();
    let want = [list.clone(), b"JTPC".to_vec()].concat();
    assert_bytes(&read_n(&mut c, want.len()), &want, "LIST, then JTPC");
    c.write_all(&[0x03, 0x00]).unwrap();
    assert_bytes(&read_n(&mut c, 4), b"JTPC", "second CANCEL");
    assert_silent(&mut c, Duration::from_millis(500));
    c.write_all(&[0x03, 0x00, 0x03, 0x00, 0x01, 0x00]).unwrap();
    let want = [b"JTPCJTPC".to_vec(), list].concat();
    assert_bytes(&read_to_close(&mut c), &want, "two CANCELs, then LIST");
}

#[test]
fn j25_two_cancels_mid_get_give_two_jtpc() {
    let (_d, cat, s) = long_server("j25m");
    let list = list_bytes(&cat);
    let ids: Vec<u64> = cat.iter().take(255).map(|i| i.id).collect();
    let order: Vec<&Img> = cat.iter().take(255).collect();
    let mut c = connect(&s);
    let mut w = get_request(true, &ids);
    w.extend_from_slice(&[0x03, 0x00, 0x03, 0x00, 0x01, 0x00]);
    c.write_all(&w).unwrap();
    let got = read_to_close(&mut c);
    let (_m, _k, rest) = split_cancelled(&got, b"JTPD", &order);
    assert_bytes(
        rest,
        &[b"JTPC".to_vec(), list].concat(),
        "second JTPC, then LIST",
    );
}

// ---------------------------------------------------------------------------------------------
// WATCH

#[test]
fn j26_watch_without_rescans_gets_jtpe4() {
    let (_d, cat, s) = small_server("j26", &["--no-follow"]);
    let want = jtpe(4, "WATCH not enabled; start server with --watch");
    expect_reply(&s, &[0x04, 0x00], &want);
    expect_reply(
        &s,
        &[0x01, 0x01, 0x04, 0x00],
        &[list_bytes(&cat), want].concat(),
    );
}

#[test]
fn j27_j28_j29_watch_events_for_added_and_modified_files() {
    let dir = TempDir::new("j27");
    let mut files = small_files();
    put_all(dir.path(), &as_refs(&files));
    let old = model(&as_refs(&files));
    let s = serve(dir.path(), &["--watch-interval", "1"]);
    let mut c = connect(&s);
    c.write_all(&[0x04, 0x00]).unwrap();
    // Files present at subscribe time yield nothing, across several rescans.
    assert_silent(&mut c, Duration::from_millis(2500));

    // J27: an empty GIF with an NFD name appears.
    put(dir.path(), "cafe\u{301}.gif", b"");
    let want = [
        &b"JTPW"[..],
        &[
            0xef, 0x46, 0xdb, 0x37, 0x51, 0xd8, 0xe9, 0x99, 0x04, 0x00, 0x09,
        ],
        b"caf\xc3\xa9.gif",
        &[0x00],
    ]
    .concat();
    assert_eq!(want, watch_event("cafe\u{301}.gif", b""));
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_bytes(&read_n(&mut c, want.len()), &want, "JTPW for café.gif");
    assert_silent(&mut c, Duration::from_millis(2500));

    // J28: alpha.png is rewritten (new size, new id).
    let old_alpha = old.iter().find(|i| i.name == "alpha.png").unwrap().clone();
    let new_alpha = pseudo_random(77, 9400);
    replace(dir.path(), "alpha.png", &new_alpha);
    let ev = watch_event("alpha.png", &new_alpha);
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_bytes(
        &read_n(&mut c, ev.len()),
        &ev,
        "JTPW for the modified alpha.png",
    );
    assert_silent(&mut c, Duration::from_millis(1500));

    // J29: CANCEL ends the subscription and the connection serves requests again.
    c.write_all(&[0x03, 0x00]).unwrap();
    assert_bytes(&read_n(&mut c, 4), b"JTPC", "CANCEL during WATCH");
    files[0].1 = new_alpha.clone();
    files.push(("cafe\u{301}.gif".into(), Vec::new()));
    let cat = model(&as_refs(&files));
    let list = list_bytes(&cat);
    c.write_all(&[0x01, 0x01]).unwrap();
    assert_bytes(&read_n(&mut c, list.len()), &list, "LIST after the changes");
    assert!(!cat.iter().any(|i| i.id == old_alpha.id));
    c.write_all(&get_request(true, &[old_alpha.id])).unwrap();
    assert_bytes(&read_n(&mut c, 5), b"JTPD\x00", "GET of the retired id");
    let new_img = cat.iter().find(|i| i.name == "alpha.png").unwrap();
    c.write_all(&get_request(false, &[old_alpha.id, new_img.id]))
        .unwrap();
    assert_bytes(
        &read_to_close(&mut c),
        &get_bytes(&[new_img]),
        "GET old and new id",
    );
    let all: Vec<&Img> = cat.iter().collect();
    expect_reply(&s, &[0x02, 0x00, 0x00], &packets_frame(b"JTPB", &all));
    expect_reply(&s, &[0x05, 0x00], &packets_frame(b"JTPG", &all));
}

#[test]
fn j29_anything_but_cancel_during_watch_gets_jtpe2() {
    let (_d, _cat, s) = small_server("j29", &["--watch-interval", "1"]);
    for bytes in [
        &[0x01, 0x00][..],
        &[0x04, 0x00],
        &[0x00, 0x00, 0x00],
        &[0xff],
    ] {
        let mut c = connect(&s);
        c.write_all(&[0x04, 0x00]).unwrap();
        assert_silent(&mut c, Duration::from_millis(300));
        c.write_all(bytes).unwrap();
        assert_bytes(
            &read_to_close(&mut c),
            &jtpe(2, "only CANCEL is allowed during WATCH"),
            &format!("{} during WATCH", hex(bytes)),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Rate limiting, connection cap

#[test]
fn j30_rate_limit_refuses_the_third_connection_unprompted() {
    let (_d, cat, s) = small_server("j30", &["--rate-limit", "2", "--rate-limit-window", "2"]);
    let list = list_bytes(&cat);
    let refusal = [&b"\x4a\x54\x50\x45\x05\x00\x11"[..], b"too many requests"].concat();
    assert_eq!(refusal, jtpe(5, "too many requests"));
    let t0 = Instant::now();
    expect_reply(&s, &[0x01, 0x00], &list);
    std::thread::sleep(Duration::from_millis(1000));
    expect_reply(&s, &[0x01, 0x00], &list);
    // Third and fourth: refused before any request is sent.
    for _ in 0..2 {
        let mut c = connect(&s);
        assert_bytes(&read_to_close(&mut c), &refusal, "refused connection");
    }
    // Knock until admitted: once the first connection has left the 2 s window (t0 + 2 s).
    // Had refusals counted, each knock would keep the window full and none would get in.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        // A refused connection lingers for input before closing (no RST): ask and see.
        let mut c = connect(&s);
        c.write_all(&[0x01, 0x00]).unwrap();
        let got = read_to_close(&mut c);
        if got == list {
            break;
        }
        assert_bytes(&got, &refusal, "a knock");
        assert!(Instant::now() < deadline, "never admitted again");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(1900),
        "admitted after {:?} with a 2 s window",
        t0.elapsed()
    );
    // The second connection (t0 + 1 s) is still in the window: full again.
    let mut c = connect(&s);
    assert_bytes(&read_to_close(&mut c), &refusal, "over the limit again");
}

#[test]
fn j30_keep_alive_requests_over_the_rate_limit_get_jtpe5() {
    let (_d, cat, s) = small_server("j30k", &["--rate-limit", "2"]);
    let list = list_bytes(&cat);
    let mut c = connect(&s);
    c.write_all(&[0x01, 0x01]).unwrap();
    assert_bytes(
        &read_n(&mut c, list.len()),
        &list,
        "request 1 (the connection)",
    );
    c.write_all(&[0x01, 0x01]).unwrap();
    assert_bytes(&read_n(&mut c, list.len()), &list, "request 2");
    c.write_all(&[0x01, 0x01]).unwrap();
    assert_bytes(
        &read_to_close(&mut c),
        &jtpe(5, "too many requests"),
        "request 3",
    );
}

#[test]
fn table_max_connections_2_third_gets_server_busy() {
    let (_d, cat, s) = small_server(
        "busy",
        &[
            "--max-connections",
            "2",
            "--max-per-ip",
            "2",
            "--keep-alive-timeout",
            "20",
        ],
    );
    let list = list_bytes(&cat);
    let mut idle: Vec<TcpStream> = Vec::new();
    for _ in 0..2 {
        let mut c = connect(&s);
        c.write_all(&[0x01, 0x01]).unwrap();
        assert_bytes(
            &read_n(&mut c, list.len()),
            &list,
            "LIST on an idle-to-be connection",
        );
        idle.push(c);
    }
    let mut c = connect(&s);
    assert_bytes(
        &read_to_close(&mut c),
        &jtpe(3, "server busy"),
        "third connection",
    );
    drop(idle);
    std::thread::sleep(Duration::from_millis(500));
    expect_reply(&s, &[0x01, 0x00], &list);
}

// ---------------------------------------------------------------------------------------------
// TLS

fn tls_client(cert: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(cfg)
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_connect(
    s: &Server,
    cfg: Arc<rustls::ClientConfig>,
    name: &'static str,
) -> Result<TlsStream, String> {
    let mut tcp = connect(s);
    let sn = rustls::pki_types::ServerName::try_from(name).unwrap();
    let mut conn = rustls::ClientConnection::new(cfg, sn).map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|e| format!("{e:?}"))?;
    }
    Ok(rustls::StreamOwned::new(conn, tcp))
}

#[test]
fn j31_tls_alpn_jtp1_selected_none_accepted_h2_refused() {
    let (dir, cat, s) = small_server("j31", &["--tls"]);
    let cert = dir.join(".ferry/tls/cert.pem");
    assert!(
        cert.exists(),
        "no generated certificate at {}",
        cert.display()
    );
    let list = list_bytes(&cat);

    let mut t =
        tls_connect(&s, tls_client(&cert, &[b"jtp/1"]), "localhost").expect("handshake with jtp/1");
    assert_eq!(t.conn.alpn_protocol(), Some(&b"jtp/1"[..]));
    assert_eq!(
        t.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    t.write_all(&[0x01, 0x00]).unwrap();
    let mut got = Vec::new();
    // read_to_end fails with UnexpectedEof unless the server sends close_notify.
    t.read_to_end(&mut got)
        .expect("LIST over TLS ending in close_notify");
    assert_bytes(&got, &list, "LIST over TLS");

    let mut t =
        tls_connect(&s, tls_client(&cert, &[]), "127.0.0.1").expect("handshake without ALPN");
    assert_eq!(t.conn.alpn_protocol(), None);
    t.write_all(&get_request(false, &[cat[2].id])).unwrap();
    let mut got = Vec::new();
    t.read_to_end(&mut got)
        .expect("GET over TLS ending in close_notify");
    assert_bytes(&got, &get_bytes(&[&cat[2]]), "GET over TLS");

    let err = tls_connect(&s, tls_client(&cert, &[b"h2"]), "localhost")
        .expect_err("a handshake offering only h2 must fail");
    assert!(err.contains("NoApplicationProtocol"), "h2 only: {err}");

    // Still serving.
    let mut t =
        tls_connect(&s, tls_client(&cert, &[b"h2", b"jtp/1"]), "localhost").expect("handshake");
    assert_eq!(t.conn.alpn_protocol(), Some(&b"jtp/1"[..]));
    t.write_all(&[0x01, 0x00]).unwrap();
    let mut got = Vec::new();
    t.read_to_end(&mut got).unwrap();
    assert_bytes(&got, &list, "LIST over TLS");
}

// ---------------------------------------------------------------------------------------------
// Catalog construction

#[test]
fn j33_only_image_extensions_no_dotfiles_no_outside_symlinks() {
    let dir = TempDir::new("j33");
    let outside = TempDir::new("j33out");
    let d = |k: u64| pseudo_random(300 + k, 500 + k as usize);
    let names = [
        "a.png",
        "B.JPG",
        "c.Jpeg",
        "d.webp",
        "e.BMP",
        "f.gif",
        "g.txt",
        "h.png.bak",
        "noext",
        ".hidden.png",
        "png",
        "i.pngx",
        "j.tiff",
    ];
    let datas: Vec<Vec<u8>> = (0..names.len() as u64).map(d).collect();
    let files: Vec<(&str, &[u8])> = names
        .iter()
        .copied()
        .zip(datas.iter().map(|x| x.as_slice()))
        .collect();
    put_all(dir.path(), &files);
    std::fs::create_dir(dir.join("sub")).unwrap();
    put(&dir.join("sub"), "x.png", &d(99));
    std::fs::create_dir_all(dir.join(".ferry")).unwrap();
    put(&dir.join(".ferry"), "y.png", &d(98));
    put(outside.path(), "secret.png", &d(97));
    std::os::unix::fs::symlink(outside.join("secret.png"), dir.join("link.png")).unwrap();
    let cat = model(&files);
    assert_eq!(cat.len(), 6);
    let s = serve(dir.path(), &[]);
    expect_reply(&s, &[0x01, 0x00], &list_bytes(&cat));
    expect_reply(
        &s,
        &get_request(false, &[xid(&d(97)), xid(&d(99)), xid(&d(9))]),
        b"JTPD\x00",
    );
}

#[test]
fn j33_only_filter_is_ascii_case_insensitive() {
    let dir = TempDir::new("j33o");
    let a = pseudo_random(11, 100);
    let b = pseudo_random(13, 100);
    let c = pseudo_random(15, 100);
    let files: Vec<(&str, &[u8])> = vec![("cat1.png", &a), ("Cat2.PNG", &b), ("dog.png", &c)];
    put_all(dir.path(), &files);
    let s = serve(dir.path(), &["--only", "cAT"]);
    let cat = model(&files[..2]);
    expect_reply(&s, &[0x01, 0x00], &list_bytes(&cat));
    // dog.png is not part of this server's catalog for any request.
    expect_reply(&s, &get_request(false, &[xid(&c)]), b"JTPD\x00");
    let kept: Vec<&Img> = cat.iter().collect();
    expect_reply(&s, &[0x05, 0x00], &packets_frame(b"JTPG", &kept));
    expect_reply(&s, &[0x02, 0x00, 0x00], &packets_frame(b"JTPB", &kept));
}

#[test]
fn j34_nfc_names_order_ties_by_id_and_duplicate_content_once() {
    let dir = TempDir::new("j34");
    let x = pseudo_random(1, 700);
    let y = pseudo_random(2, 800);
    let z = pseudo_random(3, 900);
    let w = pseudo_random(4, 1000);
    let dup = pseudo_random(5, 1100);
    let files: Vec<(&str, &[u8])> = vec![
        ("\u{e9}.png", &x),   // NFC é
        ("e\u{301}.png", &y), // NFD é: same NFC name, tie broken by id
        ("cafe\u{301}.jpg", &z),
        ("B.png", &w),
        ("x1.png", &dup),
        ("x0.png", &dup),
    ];
    put_all(dir.path(), &files);
    let cat = model(&files);
    assert_eq!(cat.len(), 5);
    assert!(cat.iter().any(|i| i.name == "x0.png") && !cat.iter().any(|i| i.name == "x1.png"));
    let s = serve(dir.path(), &[]);
    expect_reply(&s, &[0x01, 0x00], &list_bytes(&cat));
    let all: Vec<&Img> = cat.iter().collect();
    expect_reply(&s, &[0x05, 0x00], &packets_frame(b"JTPG", &all));
}

#[test]
fn j35_empty_image_served_huge_and_non_utf8_files_excluded() {
    let dir = TempDir::new("j35");
    let ok = pseudo_random(1, 321);
    put(dir.path(), "empty.png", b"");
    put(dir.path(), "ok.gif", &ok);
    std::fs::File::create(dir.join("big.png"))
        .unwrap()
        .set_len((4u64 << 30) + 1)
        .unwrap();
    {
        use std::os::unix::ffi::OsStrExt;
        let name = std::ffi::OsStr::from_bytes(b"\xffbad.png");
        std::fs::write(dir.path().join(name), pseudo_random(2, 50)).unwrap();
    }
    let cat = model(&[("empty.png", b""), ("ok.gif", &ok)]);
    assert_eq!(hex(&cat[0].id.to_be_bytes()), "ef46db3751d8e999");
    let s = serve(dir.path(), &[]);
    expect_reply(&s, &[0x01, 0x00], &list_bytes(&cat));
    expect_reply(
        &s,
        &get_request(false, &[0xef46_db37_51d8_e999]),
        &[
            &b"JTPD\x01\x00\x00"[..],
            &[0xef, 0x46, 0xdb, 0x37, 0x51, 0xd8, 0xe9, 0x99],
        ]
        .concat(),
    );
    let all: Vec<&Img> = cat.iter().collect();
    expect_reply(&s, &[0x02, 0x00, 0x00], &packets_frame(b"JTPB", &all));
}

// ---------------------------------------------------------------------------------------------
// Files changing under the server

#[test]
fn j36_truncated_while_streamed_closes_without_completing_the_packet() {
    let dir = TempDir::new("j36t");
    let big = sparse(dir.path(), "big.png", 64 << 20);
    let small = pseudo_random(4, 5000);
    put(dir.path(), "small.png", &small);
    let small_img = model(&[("small.png", &small)]).remove(0);
    let s = serve(dir.path(), &["--compression-threshold", "0"]);
    let mut c = connect(&s);
    c.write_all(&get_request(false, &[big.id])).unwrap();
    let head = read_n(&mut c, 1 << 20);
    assert_eq!(&head[..5], b"JTPD\x01");
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("big.png"))
        .unwrap()
        .set_len(1000)
        .unwrap();
    let (rest, end) = read_until_end(&mut c);
    let total = head.len() + rest.len();
    let full = 5 + 1 + varint(64 << 20).len() + 8 + (64 << 20);
    eprintln!("received {total} of {full} bytes, then {end:?}");
    assert!(total < full, "the packet of a truncated file was completed");
    assert_ne!(end, End::Timeout, "connection neither completed nor closed");
    std::thread::sleep(Duration::from_millis(200));
    let mut s = s;
    assert!(s.is_alive(), "server died: {}", s.stderr_text());
    expect_reply(
        &s,
        &get_request(false, &[small_img.id]),
        &get_bytes(&[&small_img]),
    );
    // The truncated file no longer matches its snapshot: left out of every count.
    expect_reply(
        &s,
        &get_request(false, &[big.id, small_img.id]),
        &get_bytes(&[&small_img]),
    );
}

#[test]
fn j36_deleted_before_get_is_left_out_of_the_count() {
    let (dir, cat, s) = small_server("j36d", &[]);
    let (a, b, g) = (&cat[0], &cat[1], &cat[2]);
    std::fs::remove_file(dir.join(&b.name)).unwrap();
    expect_reply(
        &s,
        &get_request(false, &[a.id, b.id, g.id]),
        &get_bytes(&[a, g]),
    );
    expect_reply(&s, &[0x05, 0x00], &packets_frame(b"JTPG", &[a, g]));
    expect_reply(&s, &[0x02, 0x00, 0x00], &packets_frame(b"JTPB", &[a, g]));
    // LIST reads snapshot metadata only (3.2), so it may still name the deleted file, but its
    // count must match its entries.
    let l = exchange(&s, &[0x01, 0x00]);
    let mut pos = 4;
    let n = read_varint(&l, &mut pos);
    for _ in 0..n {
        pos += 8 + 1;
        let len = u16::from_be_bytes([l[pos], l[pos + 1]]) as usize;
        pos += 2 + len;
        read_varint(&l, &mut pos);
    }
    assert_eq!(pos, l.len(), "LIST count and entries disagree");
}

#[test]
fn j36_rewritten_in_place_never_serves_new_bytes_under_the_old_id() {
    let (dir, cat, s) = small_server("j36r", &[]);
    let g = &cat[2];
    // Same size, new content, same inode.
    std::fs::write(dir.join(&g.name), pseudo_random(555, g.data.len())).unwrap();
    let got = exchange(&s, &get_request(false, &[g.id]));
    assert_eq!(&got[..4], b"JTPD");
    let mut pos = 5;
    for _ in 0..got[4] {
        let p = parse_packet(&got, &mut pos);
        assert_eq!(p.id, g.id);
        packet_plain(&p, g.data.len());
    }
    assert_eq!(pos, got.len());
    let mut s = s;
    assert!(s.is_alive());
}

// ---------------------------------------------------------------------------------------------
// Load and faults

#[test]
fn load_200_concurrent_clients_list_and_get_all() {
    let (_d, cat, s) = small_server("load200", &[]);
    let list = list_bytes(&cat);
    let ids: Vec<u64> = cat.iter().map(|i| i.id).collect();
    let get = get_bytes(&cat.iter().collect::<Vec<_>>());
    let addr = s.addr("jtp");
    std::thread::scope(|sc| {
        let hs: Vec<_> = (0..200)
            .map(|_| {
                let (list, get, ids, addr) = (&list, &get, &ids, &addr);
                sc.spawn(move || {
                    for (req, want) in [(vec![0x01, 0x00], list), (get_request(false, ids), get)] {
                        let mut c = TcpStream::connect(addr).unwrap();
                        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                        c.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
                        c.write_all(&req).unwrap();
                        let got = read_to_close(&mut c);
                        assert_bytes(&got, want, "concurrent client");
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    });
}

#[test]
fn load_150_idle_connections_do_not_delay_a_new_client() {
    let (_d, cat, s) = small_server("idle150", &[]);
    let idle: Vec<TcpStream> = (0..150).map(|_| connect(&s)).collect();
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    expect_reply(&s, &[0x01, 0x00], &list_bytes(&cat));
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "new client served after {took:?}"
    );
    drop(idle);
}

#[test]
fn sigterm_during_a_large_transfer_exits_0_with_a_clean_close() {
    let dir = TempDir::new("term");
    let big = sparse(dir.path(), "big.png", 64 << 20);
    let mut s = serve(dir.path(), &["--compression-threshold", "0"]);
    let mut c = connect(&s);
    c.write_all(&get_request(false, &[big.id])).unwrap();
    let mut got = read_n(&mut c, 1 << 20);
    s.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    let (rest, end) = read_until_end(&mut c);
    got.extend_from_slice(&rest);
    let head = [
        &b"JTPD\x01\x00"[..],
        &varint(64 << 20),
        &big.id.to_be_bytes(),
    ]
    .concat();
    let full = head.len() + (64 << 20);
    eprintln!("received {} of {full} bytes, then {end:?}", got.len());
    assert_eq!(end, End::Eof, "not a clean close");
    assert_bytes(&got[..head.len()], &head, "packet header");
    if got.len() == full {
        assert!(
            got[head.len()..].iter().all(|&b| b == 0),
            "transferred bytes differ"
        );
    } else {
        assert!(got.len() < full);
    }
    let status = s
        .wait_exit(Duration::from_secs(20))
        .expect("server still running 20 s after SIGTERM");
    assert!(
        status.success(),
        "exit status {status:?}; stderr:\n{}",
        s.stderr_text()
    );
}

// ---------------------------------------------------------------------------------------------
// Later additions

/// A ClientHello offering TLS 1.2 only (no supported_versions extension).
fn tls12_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&pseudo_random(21, 32));
    body.push(0x00); // session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x2f]); // ECDHE-ECDSA/RSA-AES128-GCM
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let ext: Vec<u8> = [
        &[0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x08, 0x04][..], // signature_algorithms
        &[0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x17],                 // supported_groups
        &[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00],                             // ec_point_formats
    ]
    .concat();
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![0x01, 0x00];
    hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

#[test]
fn j31_tls12_only_client_hello_gets_alert_protocol_version() {
    let (_dir, cat, s) = small_server("j31v", &["--tls"]);
    let mut c = connect(&s);
    c.write_all(&tls12_client_hello()).unwrap();
    let (got, end) = read_until_end(&mut c);
    assert_ne!(end, End::Timeout, "no close after a TLS 1.2 ClientHello");
    // alert record: 15 03 0x 00 02, level fatal (02), protocol_version (70 = 0x46)
    assert!(got.len() >= 7, "no alert: {}", hex(&got));
    assert_eq!(got[0], 0x15, "not an alert record: {}", hex(&got));
    assert_eq!(
        &got[3..7],
        &[0x00, 0x02, 0x02, 0x46],
        "alert: {}",
        hex(&got)
    );
    // Still serving TLS 1.3.
    let cert = _dir.join(".ferry/tls/cert.pem");
    let mut t = tls_connect(&s, tls_client(&cert, &[b"jtp/1"]), "localhost").expect("handshake");
    t.write_all(&[0x01, 0x00]).unwrap();
    let mut got = Vec::new();
    t.read_to_end(&mut got).unwrap();
    assert_bytes(&got, &list_bytes(&cat), "LIST over TLS");
}

#[test]
fn j32_named_but_missing_cert_stops_startup_and_writes_nothing() {
    let dir = TempDir::new("j32");
    let images = dir.join("images");
    std::fs::create_dir(&images).unwrap();
    put(&images, "a.png", &pseudo_random(1, 100));
    let key = dir.join("key.pem");
    std::fs::write(&key, b"keep me").unwrap();
    let missing = dir.join("missing.pem");
    let out = crate::harness::ferry(
        &[
            "jtp",
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--images",
            images.to_str().unwrap(),
            "--cert",
            missing.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
        Duration::from_secs(30),
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
    assert!(!missing.exists(), "the missing certificate was created");
    assert_eq!(
        std::fs::read(&key).unwrap(),
        b"keep me",
        "the key was overwritten"
    );
    assert!(
        !images.join(".ferry/tls/cert.pem").exists(),
        "a certificate was generated anyway"
    );
}

#[test]
fn j35_excluded_files_are_logged() {
    let dir = TempDir::new("j35log");
    put(dir.path(), "ok.png", &pseudo_random(1, 10));
    std::fs::File::create(dir.join("big.png"))
        .unwrap()
        .set_len((4u64 << 30) + 1)
        .unwrap();
    {
        use std::os::unix::ffi::OsStrExt;
        let name = std::ffi::OsStr::from_bytes(b"\xffbad.png");
        std::fs::write(dir.path().join(name), pseudo_random(2, 50)).unwrap();
    }
    let s = serve(dir.path(), &["-v"]);
    // Give the log a moment after the listening line.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && !(s.stderr_text().contains("big.png") && s.stderr_text().contains("bad.png"))
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = s.stderr_text();
    assert!(log.contains("bad.png"), "non-UTF-8 name not logged:\n{log}");
    assert!(
        log.contains("big.png"),
        "file over 4 GiB - 1 not logged:\n{log}"
    );
}

#[test]
fn watch_burst_of_300_files_is_never_dropped_silently() {
    let dir = TempDir::new("burst");
    put(dir.path(), "seed.png", &pseudo_random(1, 100));
    let s = serve(dir.path(), &["--watch-interval", "1"]);
    let mut c = connect(&s);
    c.write_all(&[0x04, 0x00]).unwrap();
    assert_silent(&mut c, Duration::from_millis(1200));
    let mut want = std::collections::HashMap::new();
    for k in 0..300u64 {
        let data = pseudo_random(5001 + 2 * k, 64);
        let name = format!("w{k:03}.gif");
        want.insert(xid(&data), (name.clone(), data.clone()));
        replace(dir.path(), &name, &data);
    }
    // Read events until all 300 arrived or the server said it lost some.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut seen = std::collections::HashSet::new();
    c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let lost = jtpe(3, "watch events lost; LIST again");
    loop {
        let mut pos = 0;
        let mut events = 0;
        let mut lost_at = None;
        while pos < got.len() {
            if got[pos..].starts_with(b"JTPE") {
                lost_at = Some(pos);
                break;
            }
            let ev_len = {
                if got.len() < pos + 15 {
                    break;
                }
                let nl = u16::from_be_bytes([got[pos + 13], got[pos + 14]]) as usize;
                15 + nl + 1
            };
            if got.len() < pos + ev_len {
                break;
            }
            assert_eq!(&got[pos..pos + 4], b"JTPW", "event at {pos}");
            let id = u64::from_be_bytes(got[pos + 4..pos + 12].try_into().unwrap());
            let (name, data) = want.get(&id).expect("event for an unknown id");
            assert_bytes(&got[pos..pos + ev_len], &watch_event(name, data), "JTPW");
            if events >= seen.len() {
                assert!(seen.insert(id), "event repeated for {id:016x}");
            }
            events += 1;
            pos += ev_len;
        }
        if let Some(at) = lost_at {
            if got.len() >= at + lost.len() {
                assert_bytes(&got[at..], &lost, "overflow frame");
                let rest = read_to_close(&mut c);
                assert_bytes(&rest, b"", "bytes after the overflow frame");
                eprintln!("{events} events, then JTPE 3");
                break;
            }
        } else if events == 300 {
            assert_silent(&mut c, Duration::from_millis(1500));
            break;
        }
        let n = c.read(&mut buf).expect("waiting for events");
        assert!(n > 0, "closed after {events} events without JTPE 3");
        got.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn table_tls_over_max_connections_closes_before_the_handshake() {
    let (dir, cat, s) = small_server(
        "busytls",
        &[
            "--tls",
            "--max-connections",
            "1",
            "--keep-alive-timeout",
            "20",
        ],
    );
    let cert = dir.join(".ferry/tls/cert.pem");
    let list = list_bytes(&cat);
    let mut held = tls_connect(&s, tls_client(&cert, &[b"jtp/1"]), "localhost").expect("handshake");
    held.write_all(&[0x01, 0x01]).unwrap();
    let mut got = vec![0u8; list.len()];
    held.read_exact(&mut got).unwrap();
    assert_bytes(&got, &list, "LIST on the held connection");
    // A second TCP connection: closed without a ServerHello.
    let mut c = connect(&s);
    c.write_all(&tls12_client_hello()).unwrap();
    let (got, end) = read_until_end(&mut c);
    assert_ne!(end, End::Timeout);
    assert!(
        got.is_empty(),
        "bytes sent to a connection over the cap: {}",
        hex(&got)
    );
    drop(held);
    std::thread::sleep(Duration::from_millis(500));
    let mut t = tls_connect(&s, tls_client(&cert, &[b"jtp/1"]), "localhost").expect("handshake");
    t.write_all(&[0x01, 0x00]).unwrap();
    let mut got = Vec::new();
    t.read_to_end(&mut got).unwrap();
    assert_bytes(&got, &list, "LIST after the cap freed up");
}

#[test]
fn j30_tls_refusal_frame_comes_inside_tls_after_the_handshake() {
    let (dir, cat, s) = small_server("ratetls", &["--tls", "--rate-limit", "1"]);
    let cert = dir.join(".ferry/tls/cert.pem");
    let mut t = tls_connect(&s, tls_client(&cert, &[b"jtp/1"]), "localhost").expect("handshake");
    t.write_all(&[0x01, 0x00]).unwrap();
    let mut got = Vec::new();
    t.read_to_end(&mut got).unwrap();
    assert_bytes(&got, &list_bytes(&cat), "first connection");
    let mut t = tls_connect(&s, tls_client(&cert, &[b"jtp/1"]), "localhost")
        .expect("handshake of the refused connection");
    let mut got = Vec::new();
    let r = t.read_to_end(&mut got);
    assert_bytes(&got, &jtpe(5, "too many requests"), "refusal inside TLS");
    r.expect("refusal ending in close_notify");
}

#[test]
fn j23_mid_stream_cancel_with_keep_alive_bit_03_01() {
    let (_d, cat, s) = long_server("j23b");
    let ids: Vec<u64> = cat.iter().take(200).map(|i| i.id).collect();
    let order: Vec<&Img> = cat.iter().take(200).collect();
    let mut c = connect(&s);
    c.write_all(&get_request(true, &ids)).unwrap();
    let mut got = read_n(&mut c, 1 << 20);
    c.write_all(&[0x03, 0x01, 0x01, 0x00]).unwrap();
    got.extend_from_slice(&read_to_close(&mut c));
    let (m, k, rest) = split_cancelled(&got, b"JTPD", &order);
    assert!(k < m);
    assert_bytes(rest, &list_bytes(&cat), "LIST after 03 01");
}

#[test]
fn j24_pipelined_input_beyond_64_kib_is_neither_lost_nor_reordered() {
    let (_d, cat, s) = small_server("pipe", &[]);
    let list = list_bytes(&cat);
    let n = 40_000;
    let mut req = [0x01, 0x01].repeat(n);
    req.extend_from_slice(&[0x01, 0x00]);
    let mut c = connect(&s);
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&req));
    let got = read_to_close(&mut c);
    writer.join().unwrap().unwrap();
    assert_eq!(
        got.len(),
        list.len() * (n + 1),
        "{} LIST frames expected",
        n + 1
    );
    for (k, frame) in got.chunks(list.len()).enumerate() {
        assert_bytes(frame, &list, &format!("LIST {k}"));
    }
}

#[test]
fn j18_slow_but_progressing_body_is_served() {
    let (_d, cat, s) = small_server("slow", &[]);
    // 19 bytes, one every 170 ms: 3.2 s in all, above --io-timeout 2 but always progressing.
    let req = batch_request(false, &[cat[0].id, cat[2].id]);
    let mut c = connect(&s);
    c.set_nodelay(true).unwrap();
    for b in &req {
        c.write_all(&[*b]).unwrap();
        std::thread::sleep(Duration::from_millis(170));
    }
    assert_bytes(
        &read_to_close(&mut c),
        &packets_frame(b"JTPB", &[&cat[1]]),
        "slow BATCH",
    );
}

#[test]
fn j36_rewritten_in_place_while_streamed_never_completes_the_packet() {
    use std::os::unix::fs::FileExt;
    let dir = TempDir::new("j36w");
    let big = sparse(dir.path(), "big.png", 64 << 20);
    let small = pseudo_random(4, 5000);
    put(dir.path(), "small.png", &small);
    let small_img = model(&[("small.png", &small)]).remove(0);
    let s = serve(dir.path(), &["--compression-threshold", "0"]);
    let mut c = connect(&s);
    c.write_all(&get_request(false, &[big.id])).unwrap();
    let head = read_n(&mut c, 1 << 20);
    assert_eq!(&head[..5], b"JTPD\x01");
    // Same size, new bytes near the end, same inode.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("big.png"))
        .unwrap();
    f.write_all_at(&[0xff; 4096], (64 << 20) - 8192).unwrap();
    drop(f);
    let (rest, end) = read_until_end(&mut c);
    let total = head.len() + rest.len();
    let full = 5 + 1 + varint(64 << 20).len() + 8 + (64 << 20);
    eprintln!("received {total} of {full} bytes, then {end:?}");
    assert_ne!(end, End::Timeout);
    assert!(
        total < full,
        "a packet whose file changed mid-stream was completed"
    );
    let mut s = s;
    assert!(s.is_alive());
    expect_reply(
        &s,
        &get_request(false, &[small_img.id]),
        &get_bytes(&[&small_img]),
    );
}

#[test]
fn j28_replaced_by_rename_without_rescan_serves_old_bytes_or_nothing() {
    let (dir, cat, s) = small_server("j28r", &[]);
    let g = cat[2].clone();
    replace(dir.path(), &g.name, &pseudo_random(999, 1234));
    let got = exchange(&s, &get_request(false, &[g.id]));
    assert_eq!(&got[..4], b"JTPD");
    if got[4] == 1 {
        assert_bytes(&got, &get_bytes(&[&g]), "old bytes under the old id");
    } else {
        assert_bytes(&got, b"JTPD\x00", "left out");
    }
}

#[test]
fn j28_deleted_file_under_watch_is_retired_without_an_event() {
    let dir = TempDir::new("j28d");
    let files = small_files();
    put_all(dir.path(), &as_refs(&files));
    let cat = model(&as_refs(&files));
    let s = serve(dir.path(), &["--watch-interval", "1"]);
    let mut c = connect(&s);
    c.write_all(&[0x04, 0x00]).unwrap();
    assert_silent(&mut c, Duration::from_millis(1200));
    let gone = cat.iter().find(|i| i.name == "beta.png").unwrap();
    std::fs::remove_file(dir.join("beta.png")).unwrap();
    assert_silent(&mut c, Duration::from_millis(3000));
    c.write_all(&[0x03, 0x00]).unwrap();
    assert_bytes(&read_n(&mut c, 4), b"JTPC", "CANCEL during WATCH");
    let left: Vec<Img> = cat.iter().filter(|i| i.id != gone.id).cloned().collect();
    let list = list_bytes(&left);
    c.write_all(&[0x01, 0x01]).unwrap();
    assert_bytes(
        &read_n(&mut c, list.len()),
        &list,
        "LIST without the deleted file",
    );
    c.write_all(&get_request(false, &[gone.id])).unwrap();
    assert_bytes(
        &read_to_close(&mut c),
        b"JTPD\x00",
        "GET of the deleted file's id",
    );
}

#[test]
fn table_silent_tls_handshake_is_closed_within_io_timeout() {
    let (_dir, _cat, s) = small_server("tlsto", &["--tls"]);
    let mut c = connect(&s);
    let t = Instant::now();
    let (got, end) = read_until_end(&mut c);
    let took = t.elapsed();
    assert_ne!(
        end,
        End::Timeout,
        "TLS handshake wait not bounded (still open after {took:?})"
    );
    assert!(
        took >= Duration::from_millis(1500),
        "closed after {took:?}, io-timeout 2 s"
    );
    assert!(
        took < Duration::from_secs(12),
        "closed after {took:?}, io-timeout 2 s"
    );
    eprintln!("{} bytes before the close: {}", got.len(), hex(&got));
}

#[test]
fn j32_generated_certificate_is_kept_across_restarts() {
    let dir = TempDir::new("j32k");
    put(dir.path(), "a.png", &pseudo_random(1, 100));
    let cert = dir.join(".ferry/tls/cert.pem");
    let key = dir.join(".ferry/tls/key.pem");
    let first = {
        let _s = serve(dir.path(), &["--tls"]);
        (std::fs::read(&cert).unwrap(), std::fs::read(&key).unwrap())
    };
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "key mode {mode:o}");
    }
    let s = serve(dir.path(), &["--tls"]);
    assert_eq!(
        std::fs::read(&cert).unwrap(),
        first.0,
        "certificate rewritten on restart"
    );
    assert_eq!(
        std::fs::read(&key).unwrap(),
        first.1,
        "key rewritten on restart"
    );
    for name in ["localhost", "127.0.0.1"] {
        let mut t = tls_connect(&s, tls_client(&cert, &[b"jtp/1"]), name).expect("handshake");
        t.write_all(&[0x00, 0x00, 0x00]).unwrap();
        let mut got = Vec::new();
        t.read_to_end(&mut got).unwrap();
        assert_bytes(&got, b"JTPD\x00", name);
    }
}

#[test]
fn j27_watch_events_only_for_new_ids_of_served_images() {
    let dir = TempDir::new("j27f");
    let a = pseudo_random(11, 300);
    put(dir.path(), "cat1.png", &a);
    let s = serve(dir.path(), &["--watch-interval", "1", "--only", "CAT"]);
    let mut c = connect(&s);
    c.write_all(&[0x04, 0x00]).unwrap();
    assert_silent(&mut c, Duration::from_millis(1200));
    // Not served by this server: filtered by --only, not an image, a dotfile, a known id.
    replace(dir.path(), "dog.png", &pseudo_random(13, 300));
    replace(dir.path(), "cat.txt", &pseudo_random(15, 300));
    std::fs::write(dir.join(".cat.png"), pseudo_random(17, 300)).unwrap();
    replace(dir.path(), "cat0.png", &a);
    assert_silent(&mut c, Duration::from_millis(3000));
    let b = pseudo_random(19, 300);
    replace(dir.path(), "Cat2.GIF", &b);
    let ev = watch_event("Cat2.GIF", &b);
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_bytes(&read_n(&mut c, ev.len()), &ev, "JTPW for Cat2.GIF");
    assert_silent(&mut c, Duration::from_millis(1500));
    c.write_all(&[0x03, 0x00]).unwrap();
    assert_bytes(&read_n(&mut c, 4), b"JTPC", "CANCEL");
    // cat0.png now wins the shared id (first by name).
    let cat = model(&[("cat1.png", &a), ("cat0.png", &a), ("Cat2.GIF", &b)]);
    c.write_all(&[0x01, 0x00]).unwrap();
    assert_bytes(
        &read_to_close(&mut c),
        &list_bytes(&cat),
        "LIST after the changes",
    );
}

#[test]
fn j27_two_subscribers_both_get_the_event() {
    let (dir, _cat, s) = small_server("j27two", &["--watch-interval", "1"]);
    let mut subs: Vec<TcpStream> = (0..2).map(|_| connect(&s)).collect();
    for c in &mut subs {
        c.write_all(&[0x04, 0x00]).unwrap();
    }
    std::thread::sleep(Duration::from_millis(1000));
    let d = pseudo_random(23, 777);
    replace(dir.path(), "new.webp", &d);
    let ev = watch_event("new.webp", &d);
    for c in &mut subs {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_bytes(&read_n(c, ev.len()), &ev, "JTPW on each subscriber");
    }
}

/// Runs `tool args...` with no input; fails (never skips) when the tool is not on PATH.
fn run_tool(tool: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(tool)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{tool} is needed for this test and cannot run: {e}"))
}

/// J32: the certificate generated without `--cert`/`--key` verifies for `localhost` and
/// `127.0.0.1` in a real handshake with OpenSSL's `s_client` (`-verify_hostname`,
/// `-verify_ip`) and Python's `ssl` (default context, `server_hostname`), and for no other name
/// or IP. A missing `openssl` or `python3` fails the test with the reason.
#[test]
fn j32_generated_certificate_verifies_name_and_ip_in_openssl_and_python() {
    let dir = TempDir::new("j32v");
    let files = small_files();
    put_all(dir.path(), &as_refs(&files));
    let cat = model(&as_refs(&files));
    let s = serve(dir.path(), &["--tls"]);
    let cert = dir.join(".ferry/tls/cert.pem");
    let cert = cert.to_str().unwrap();
    let addr = s.addr("jtp");

    for (flag, value, ok) in [
        ("-verify_hostname", "localhost", true),
        ("-verify_ip", "127.0.0.1", true),
        ("-verify_hostname", "example.com", false),
        ("-verify_ip", "127.0.0.2", false),
    ] {
        let o = run_tool(
            "openssl",
            &[
                "s_client",
                "-connect",
                &addr,
                "-tls1_3",
                "-CAfile",
                cert,
                "-verify_return_error",
                flag,
                value,
            ],
        );
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        if ok {
            assert!(
                o.status.success(),
                "openssl s_client {flag} {value}:\n{out}"
            );
            assert!(
                out.contains("Verify return code: 0 (ok)"),
                "openssl s_client {flag} {value}:\n{out}"
            );
        } else {
            assert!(
                !o.status.success() && out.contains("mismatch"),
                "openssl s_client {flag} {value} accepted the certificate:\n{out}"
            );
        }
    }

    let script = "import socket, ssl, sys\n\
        ctx = ssl.create_default_context(cafile=sys.argv[1])\n\
        for name in sys.argv[3:]:\n\
        \x20   try:\n\
        \x20       with socket.create_connection(('127.0.0.1', int(sys.argv[2])), timeout=10) as raw:\n\
        \x20           with ctx.wrap_socket(raw, server_hostname=name) as s:\n\
        \x20               s.sendall(b'\\x01\\x00')\n\
        \x20               got = b''\n\
        \x20               while True:\n\
        \x20                   b = s.recv(65536)\n\
        \x20                   if not b: break\n\
        \x20                   got += b\n\
        \x20               print(name, s.version(), got.hex())\n\
        \x20   except ssl.SSLCertVerificationError as e:\n\
        \x20       print(name, 'refused', e.verify_message)\n";
    let port = addr.rsplit(':').next().unwrap();
    let o = run_tool(
        "python3",
        &[
            "-c",
            script,
            cert,
            port,
            "localhost",
            "127.0.0.1",
            "example.com",
            "127.0.0.2",
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "python3 ssl: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let list = hex(&list_bytes(&cat));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "python3 ssl: {out}");
    assert_eq!(lines[0], format!("localhost TLSv1.3 {list}"), "python3 ssl");
    assert_eq!(lines[1], format!("127.0.0.1 TLSv1.3 {list}"), "python3 ssl");
    assert!(
        lines[2].starts_with("example.com refused") && lines[2].contains("mismatch"),
        "python3 ssl: {out}"
    );
    assert!(
        lines[3].starts_with("127.0.0.2 refused") && lines[3].contains("mismatch"),
        "python3 ssl: {out}"
    );
}
