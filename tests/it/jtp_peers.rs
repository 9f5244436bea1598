//! Emulations of the reference JTP implementation (punctuations/jtp, G3), for J46 and J47: the
//! real one cannot be fetched here, so these peers behave exactly as sections 2, 6 and 7 of
//! `shared/specs/jtp.md` describe it.
//!
//! - [`RefClient`]: TLS only, offers NO ALPN, pins `--cert`, verifies `localhost`, sends LIST on
//!   one connection and GET/BATCH on another, closes without close_notify.
//! - [`Peer`] with [`ref_server`]: u32-varint LIST counts, `JTPD` replies, BMPs sent as level-3
//!   zstd frames without a content-size field, no close_notify (the socket is just dropped), an
//!   unsolicited `JTPE 5` from the rate limiter; over TLS (no ALPN configured) or plain TCP.
//!
//! [`Peer`] also carries the canned hostile servers of `jtp_client.rs`, and the byte builders
//! here are shared with it. Every socket has timeouts; every peer stops when dropped.

#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::harness::{self, ferry, Server, TempDir};

/// Timeout on every socket the peers own.
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);
const T: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Wire builders (spec section 2), written independently of ferry's codec.

pub fn xxh(data: &[u8]) -> u64 {
    twox_hash::XxHash64::oneshot(0, data)
}

pub fn hex(id: u64) -> String {
    format!("{id:016x}")
}

/// Pseudo-random bytes, distinct for distinct seeds (the harness generator ORs its seed with 1,
/// so seeds 2k and 2k+1 would give the same bytes).
pub fn rnd(seed: u64, len: usize) -> Vec<u8> {
    harness::pseudo_random(seed * 2 + 1, len)
}

pub fn varint(mut v: u32) -> Vec<u8> {
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

/// The type bits of a name, by its last extension.
pub fn ftype(name: &str) -> u8 {
    let ext = name.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "png" => 0,
        "jpg" | "jpeg" => 1,
        "webp" => 2,
        "bmp" => 3,
        "gif" => 4,
        _ => 7,
    }
}

/// A catalog entry: `id | flags | NameLen u16 | name | Size varint`.
pub fn entry(id: u64, flags: u8, name: &[u8], size: u32) -> Vec<u8> {
    let mut v = id.to_be_bytes().to_vec();
    v.push(flags);
    v.extend_from_slice(&(name.len() as u16).to_be_bytes());
    v.extend_from_slice(name);
    v.extend(varint(size));
    v
}

/// An image packet: `flags | Length varint | id | data`.
pub fn packet(flags: u8, id: u64, data: &[u8]) -> Vec<u8> {
    let mut v = vec![flags];
    v.extend(varint(data.len() as u32));
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(data);
    v
}

pub fn jtpe(code: u8, msg: &str) -> Vec<u8> {
    let mut v = b"JTPE".to_vec();
    v.push(code);
    v.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    v.extend_from_slice(msg.as_bytes());
    v
}

/// One level-3 zstd frame WITHOUT a content-size field and without checksum, as the reference
/// sends (frame descriptor byte `00`).
pub fn zstd_no_size(data: &[u8]) -> Vec<u8> {
    let mut c = zstd::bulk::Compressor::new(3).unwrap();
    c.include_contentsize(false).unwrap();
    c.include_checksum(false).unwrap();
    let f = c.compress(data).unwrap();
    assert_eq!(&f[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
    assert_eq!(f[4], 0x00, "frame descriptor must announce no content size");
    f
}

/// One zstd frame without content size inflating to `len` zero bytes, built in 1 MiB steps.
pub fn zstd_zero_bomb(len: usize) -> Vec<u8> {
    let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    e.include_contentsize(false).unwrap();
    e.include_checksum(false).unwrap();
    let zeros = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len());
        e.write_all(&zeros[..n]).unwrap();
        left -= n;
    }
    e.finish().unwrap()
}

/// A compressible BMP-like file.
pub fn bmp(seed: u64, len: usize) -> Vec<u8> {
    let mut v = b"BM".to_vec();
    let row = rnd(seed, 97);
    while v.len() < len {
        v.extend_from_slice(&row);
        v.extend(std::iter::repeat_n(0xffu8, 300));
    }
    v.truncate(len);
    v
}

// ---------------------------------------------------------------------------------------------
// Requests as a server reads them.

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Req {
    /// Not a request: the connection was just accepted (and the TLS handshake done).
    Connect,
    Get {
        ka: bool,
        ids: Vec<u64>,
    },
    List {
        ka: bool,
    },
    Batch {
        ka: bool,
        have: Vec<u64>,
    },
    Cancel,
    Watch,
    ListAndGet {
        ka: bool,
    },
    Other(u8, u8),
}

impl Req {
    pub fn keep_alive(&self) -> bool {
        match self {
            Req::Get { ka, .. } | Req::List { ka } | Req::Batch { ka, .. } => *ka,
            Req::ListAndGet { ka } => *ka,
            _ => false,
        }
    }
}

fn read_u64(r: &mut dyn Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

/// Reads one request; `None` on EOF before its first byte.
pub fn read_req(r: &mut dyn Read) -> io::Result<Option<Req>> {
    let mut h = [0u8; 2];
    match r.read(&mut h[..1]) {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    r.read_exact(&mut h[1..])?;
    let ka = h[1] & 1 == 1;
    Ok(Some(match h[0] {
        0 => {
            let mut n = [0u8; 1];
            r.read_exact(&mut n)?;
            let mut ids = Vec::new();
            for _ in 0..n[0] {
                ids.push(read_u64(r)?);
            }
            Req::Get { ka, ids }
        }
        1 => Req::List { ka },
        2 => {
            let mut n: u64 = 0;
            for shift in (0..35).step_by(7) {
                let mut b = [0u8; 1];
                r.read_exact(&mut b)?;
                n |= ((b[0] & 0x7f) as u64) << shift;
                if b[0] & 0x80 == 0 {
                    break;
                }
            }
            assert!(n <= 1_000_000, "have_count {n}");
            let mut have = Vec::new();
            for _ in 0..n {
                have.push(read_u64(r)?);
            }
            Req::Batch { ka, have }
        }
        3 => Req::Cancel,
        4 => Req::Watch,
        5 => Req::ListAndGet { ka },
        t => Req::Other(t, h[1]),
    }))
}

// ---------------------------------------------------------------------------------------------
// A scripted server.

/// What the connection does after a handler wrote its reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Read the next request if this one set keep-alive, else drop the socket.
    Next,
    /// Drop the socket now (no close_notify on TLS).
    Close,
    /// Keep the socket open and silent for this long, then drop it.
    Stall(Duration),
}

/// `(connection number, request, stream)`: writes the reply.
/// The handler may also read from the connection (WATCH waits for `03 00`).
pub type Handler = Arc<dyn Fn(usize, &Req, &mut dyn ReadWrite) -> io::Result<Flow> + Send + Sync>;

/// A server on 127.0.0.1:0 run by a handler, plain or TLS; stops on drop.
pub struct Peer {
    pub addr: String,
    /// Accepted connections so far.
    pub conns: Arc<AtomicUsize>,
    /// Every request read, with its connection number.
    pub log: Arc<Mutex<Vec<(usize, Req)>>>,
    /// The ALPN protocol negotiated on each TLS connection (the server offers `jtp/1` only if
    /// asked to, to observe what the client offers).
    pub alpn: Arc<Mutex<Vec<Option<Vec<u8>>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Peer {
    pub fn plain(handler: Handler) -> Peer {
        Peer::start(None, handler)
    }

    /// TLS with `cert`/`key` PEM files; `alpn` lists protocols the server accepts (the
    /// reference configures none).
    pub fn tls(cert: &Path, key: &Path, alpn: &[&[u8]], handler: Handler) -> Peer {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        Peer::start(Some(Arc::new(cfg)), handler)
    }

    fn start(tls: Option<Arc<rustls::ServerConfig>>, handler: Handler) -> Peer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(AtomicUsize::new(0));
        let log = Arc::new(Mutex::new(Vec::new()));
        let alpn = Arc::new(Mutex::new(Vec::new()));
        let (s_b, c2, l2, a2) = (stop.clone(), conns.clone(), log.clone(), alpn.clone());
        let thread = std::thread::spawn(move || {
            while !s_b.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((sock, _)) => {
                        let n = c2.fetch_add(1, Ordering::SeqCst);
                        let (h, lg, al, tls) =
                            (handler.clone(), l2.clone(), a2.clone(), tls.clone());
                        std::thread::spawn(move || {
                            let _ = serve_conn(n, sock, tls, h, lg, al);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Peer {
            addr,
            conns,
            log,
            alpn,
            stop,
            thread: Some(thread),
        }
    }

    pub fn requests(&self) -> Vec<(usize, Req)> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_conn(
    n: usize,
    sock: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: Handler,
    log: Arc<Mutex<Vec<(usize, Req)>>>,
    alpn: Arc<Mutex<Vec<Option<Vec<u8>>>>>,
) -> io::Result<()> {
    sock.set_nonblocking(false)?;
    sock.set_read_timeout(Some(SOCKET_TIMEOUT))?;
    sock.set_write_timeout(Some(SOCKET_TIMEOUT))?;
    sock.set_nodelay(true)?;
    let mut stream: Box<dyn ReadWrite> = match tls {
        None => Box::new(sock),
        Some(cfg) => {
            let mut conn = rustls::ServerConnection::new(cfg).unwrap();
            let mut sock = sock;
            while conn.is_handshaking() {
                conn.complete_io(&mut sock)?;
            }
            alpn.lock()
                .unwrap()
                .push(conn.alpn_protocol().map(|a| a.to_vec()));
            Box::new(rustls::StreamOwned::new(conn, sock))
        }
    };
    let mut req = Req::Connect;
    loop {
        if req != Req::Connect {
            log.lock().unwrap().push((n, req.clone()));
        }
        let flow = handler(n, &req, &mut *stream)?;
        stream.flush()?;
        match flow {
            Flow::Close => return Ok(()),
            Flow::Stall(d) => {
                std::thread::sleep(d);
                return Ok(());
            }
            Flow::Next if req != Req::Connect && !req.keep_alive() => return Ok(()),
            Flow::Next => {}
        }
        req = match read_req(&mut stream)? {
            Some(r) => r,
            None => return Ok(()),
        };
    }
    // Dropping the stream drops the socket: no close_notify, as the reference.
}

/// A connection as handlers see it.
pub trait ReadWrite: Read + Write + Send {
    /// The socket's read timeout (the reference's CANCEL check waits about 1 ms for a byte).
    fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()>;
}

impl ReadWrite for TcpStream {
    fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, d)
    }
}

impl ReadWrite for rustls::StreamOwned<rustls::ServerConnection, TcpStream> {
    fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        self.sock.set_read_timeout(d)
    }
}

// ---------------------------------------------------------------------------------------------
// The reference server.

/// One image of an emulated catalog.
#[derive(Clone)]
pub struct Image {
    pub name: String,
    pub data: Vec<u8>,
}

impl Image {
    pub fn new(name: &str, data: Vec<u8>) -> Image {
        Image {
            name: name.into(),
            data,
        }
    }
    pub fn id(&self) -> u64 {
        xxh(&self.data)
    }
    /// The reference's packet: BMPs (and unknown types) up to 1 MiB as a level-3 zstd frame
    /// without content size when that saves 5 %, everything else raw.
    pub fn ref_packet(&self) -> Vec<u8> {
        let t = ftype(&self.name);
        if (t == 3 || t == 7) && self.data.len() <= 1 << 20 {
            let z = zstd_no_size(&self.data);
            if (z.len() as f64) / (self.data.len().max(1) as f64) < 0.95 {
                return packet(t | 0x08, self.id(), &z);
            }
        }
        packet(t, self.id(), &self.data)
    }
}

/// The reference server's CANCEL check after each GET_BY_ID packet, the last one included
/// (jtp.md 3.5 rule 5 and section 7 bug 3): it waits about 1 ms for one byte of input; `03`
/// ends the answer (true: the caller writes `JTPC`; the `00` that follows stays unread), any
/// other byte is dropped silently and counted in `dropped`, so a request already in flight
/// loses its first byte.
pub fn ref_cancel_check(rw: &mut dyn ReadWrite, dropped: &AtomicUsize) -> io::Result<bool> {
    rw.flush()?;
    rw.set_read_timeout(Some(Duration::from_millis(1)))?;
    let mut b = [0u8; 1];
    let r = rw.read(&mut b);
    rw.set_read_timeout(Some(SOCKET_TIMEOUT))?;
    match r {
        Ok(1) if b[0] == 3 => Ok(true),
        Ok(1) => {
            dropped.fetch_add(1, Ordering::SeqCst);
            Ok(false)
        }
        Ok(_) => Ok(false),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// The reference server's replies for `images`, in this order; with `rate_limit`, connections
/// after the first `rate_limit` get the unsolicited `JTPE 5` right after accept (and TLS).
/// GET_BY_ID answers run the reference's CANCEL check after every packet ([`ref_cancel_check`]).
pub fn ref_server(images: Vec<Image>, rate_limit: Option<usize>) -> Handler {
    ref_server_counting(images, rate_limit, Arc::new(AtomicUsize::new(0)))
}

/// [`ref_server`], counting in `dropped` the bytes its CANCEL check threw away.
pub fn ref_server_counting(
    images: Vec<Image>,
    rate_limit: Option<usize>,
    dropped: Arc<AtomicUsize>,
) -> Handler {
    let images = Arc::new(images);
    Arc::new(move |n, req, w| {
        match req {
            Req::Connect => {
                if rate_limit.is_some_and(|max| n >= max) {
                    w.write_all(&jtpe(5, "too many requests"))?;
                    return Ok(Flow::Close);
                }
            }
            Req::List { .. } => {
                let mut v = b"JTPL".to_vec();
                v.extend(varint(images.len() as u32));
                for i in images.iter() {
                    v.extend(entry(
                        i.id(),
                        ftype(&i.name),
                        i.name.as_bytes(),
                        i.data.len() as u32,
                    ));
                }
                w.write_all(&v)?;
            }
            Req::Get { ids, .. } => {
                let found: Vec<&Image> = ids
                    .iter()
                    .filter_map(|id| images.iter().find(|i| i.id() == *id))
                    .collect();
                w.write_all(b"JTPD")?;
                w.write_all(&[found.len() as u8])?;
                for i in found {
                    w.write_all(&i.ref_packet())?;
                    if ref_cancel_check(w, &dropped)? {
                        w.write_all(b"JTPC")?;
                        break;
                    }
                }
            }
            Req::Batch { have, .. } => {
                let miss: Vec<&Image> = images.iter().filter(|i| !have.contains(&i.id())).collect();
                w.write_all(b"JTPB")?;
                w.write_all(&varint(miss.len() as u32))?;
                for i in miss {
                    w.write_all(&i.ref_packet())?;
                }
            }
            Req::ListAndGet { .. } => {
                w.write_all(b"JTPG")?;
                w.write_all(&varint(images.len() as u32))?;
                for i in images.iter() {
                    w.write_all(&i.ref_packet())?;
                }
            }
            Req::Cancel => w.write_all(b"JTPC")?,
            Req::Watch => {
                w.write_all(&jtpe(4, "WATCH not enabled; start server with --watch"))?;
                return Ok(Flow::Close);
            }
            Req::Other(..) => {
                w.write_all(&jtpe(4, "unknown request type"))?;
                return Ok(Flow::Close);
            }
        }
        Ok(Flow::Next)
    })
}

/// A small catalog with raw PNG/JPEG/GIF/WebP and compressible BMPs.
pub fn mixed_images() -> Vec<Image> {
    vec![
        Image::new("alpha.png", rnd(1, 9332)),
        Image::new("beta.png", rnd(2, 90243)),
        Image::new("empty.gif", Vec::new()),
        Image::new("photo.jpg", rnd(3, 300_000)),
        Image::new("pic.webp", rnd(4, 1234)),
        Image::new("scan.bmp", bmp(5, 360_054)),
        Image::new("small.bmp", bmp(6, 5000)),
        Image::new("large.bmp", bmp(7, 2_000_000)),
    ]
}

/// Writes `images` into `dir`.
pub fn write_images(dir: &Path, images: &[Image]) {
    std::fs::create_dir_all(dir).unwrap();
    for i in images {
        std::fs::write(dir.join(&i.name), &i.data).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// The reference client.

/// The reference client: TLS only, no ALPN, trusts only `--cert`, verifies `server_name`.
pub struct RefClient {
    cfg: Arc<rustls::ClientConfig>,
    addr: String,
    server_name: String,
}

/// A listing entry as the reference client reads it.
#[derive(Clone, Debug)]
pub struct Listed {
    pub id: u64,
    pub flags: u8,
    pub name: String,
    pub size: u32,
}

type RefConn = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

impl RefClient {
    pub fn new(addr: &str, cert: &Path, server_name: &str) -> RefClient {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(cert).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        assert!(
            cfg.alpn_protocols.is_empty(),
            "the reference offers no ALPN"
        );
        RefClient {
            cfg: Arc::new(cfg),
            addr: addr.into(),
            server_name: server_name.into(),
        }
    }

    fn connect(&self) -> RefConn {
        let addr: std::net::SocketAddr = self.addr.parse().unwrap();
        let sock = TcpStream::connect_timeout(&addr, SOCKET_TIMEOUT).unwrap();
        sock.set_read_timeout(Some(SOCKET_TIMEOUT)).unwrap();
        sock.set_write_timeout(Some(SOCKET_TIMEOUT)).unwrap();
        let name = ServerName::try_from(self.server_name.clone()).unwrap();
        let conn = rustls::ClientConnection::new(self.cfg.clone(), name).unwrap();
        let mut s = rustls::StreamOwned::new(conn, sock);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock).unwrap();
        }
        assert_eq!(s.conn.alpn_protocol(), None);
        s
    }

    /// LIST on a connection of its own (bit 0 clear), closed without close_notify.
    pub fn list(&self) -> Vec<Listed> {
        let mut s = self.connect();
        s.write_all(&[1, 0]).unwrap();
        s.flush().unwrap();
        let out = read_list(&mut s);
        drop(s); // no close_notify
        out
    }

    /// Downloads the catalog as the reference does in the given mode; returns the files saved.
    /// `parallel` > 1 splits the ids into contiguous ranges, one connection each.
    pub fn download(&self, out: &Path, keep_alive: bool, parallel: usize, batch: bool) {
        let listing = self.list();
        std::fs::create_dir_all(out).unwrap();
        let names: std::collections::HashMap<u64, String> =
            listing.iter().map(|l| (l.id, l.name.clone())).collect();
        let ka = keep_alive as u8;
        if batch {
            let mut s = self.connect();
            let mut req = vec![2, ka];
            req.extend(varint(0));
            s.write_all(&req).unwrap();
            s.flush().unwrap();
            expect_magic(&mut s, b"JTPB");
            let n = read_varint(&mut s);
            assert_eq!(n as usize, listing.len());
            for _ in 0..n {
                save_packet(&mut s, out, &names);
            }
            return;
        }
        let ids: Vec<u64> = listing.iter().map(|l| l.id).collect();
        let per = ids.len().div_ceil(parallel.max(1)).max(1);
        std::thread::scope(|sc| {
            for range in ids.chunks(per) {
                let names = &names;
                sc.spawn(move || {
                    // The reference's default mode: one GET of the whole range (fails above
                    // 255); with -k, one connection for chunks of 255.
                    let chunks: Vec<&[u64]> = if keep_alive {
                        range.chunks(255).collect()
                    } else {
                        assert!(range.len() <= 255, "the reference fails above 255");
                        vec![range]
                    };
                    let mut s = self.connect();
                    for chunk in chunks {
                        let mut req = vec![0, ka, chunk.len() as u8];
                        for id in chunk {
                            req.extend_from_slice(&id.to_be_bytes());
                        }
                        s.write_all(&req).unwrap();
                        s.flush().unwrap();
                        expect_magic(&mut s, b"JTPD");
                        let mut m = [0u8; 1];
                        s.read_exact(&mut m).unwrap();
                        assert_eq!(m[0] as usize, chunk.len());
                        for _ in 0..m[0] {
                            save_packet(&mut s, out, names);
                        }
                    }
                    drop(s); // no close_notify
                });
            }
        });
    }
}

fn expect_magic(r: &mut dyn Read, magic: &[u8; 4]) {
    let mut m = [0u8; 4];
    r.read_exact(&mut m).unwrap();
    assert_eq!(&m, magic, "got {:?}", String::from_utf8_lossy(&m));
}

fn read_varint(r: &mut dyn Read) -> u32 {
    let mut v: u64 = 0;
    for shift in (0..35).step_by(7) {
        let mut b = [0u8; 1];
        r.read_exact(&mut b).unwrap();
        v |= ((b[0] & 0x7f) as u64) << shift;
        if b[0] & 0x80 == 0 {
            return u32::try_from(v).unwrap();
        }
    }
    panic!("over-long varint");
}

fn read_list(r: &mut dyn Read) -> Vec<Listed> {
    expect_magic(r, b"JTPL");
    let n = read_varint(r);
    let mut out = Vec::new();
    for _ in 0..n {
        let id = read_u64(r).unwrap();
        let mut f = [0u8; 3];
        r.read_exact(&mut f).unwrap();
        let len = u16::from_be_bytes([f[1], f[2]]) as usize;
        let mut name = vec![0u8; len];
        r.read_exact(&mut name).unwrap();
        let size = read_varint(r);
        out.push(Listed {
            id,
            flags: f[0],
            name: String::from_utf8(name).unwrap(),
            size,
        });
    }
    out
}

/// Reads one packet, decompresses, verifies the id and writes it under its listed name.
fn save_packet(r: &mut dyn Read, out: &Path, names: &std::collections::HashMap<u64, String>) {
    let mut f = [0u8; 1];
    r.read_exact(&mut f).unwrap();
    assert!(f[0] < 0x10, "packet flags {:02x}", f[0]);
    let len = read_varint(r) as usize;
    let id = read_u64(r).unwrap();
    let mut data = vec![0u8; len];
    r.read_exact(&mut data).unwrap();
    if f[0] & 0x08 != 0 {
        data = zstd::stream::decode_all(&data[..]).unwrap();
    }
    assert_eq!(xxh(&data), id, "packet bytes do not hash to their id");
    std::fs::write(out.join(&names[&id]), data).unwrap();
}

// ---------------------------------------------------------------------------------------------
// J46: the reference client against ferry's server.

/// `ferry jtp serve` over TLS with `ferry certs` certificates; returns (server, certs dir).
fn ferry_tls_server(images: &TempDir) -> (Server, TempDir) {
    let certs = TempDir::new("refcerts");
    let o = ferry(&["certs", "--out", certs.path().to_str().unwrap()], T);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = Server::start(
        &[
            "jtp",
            "serve",
            "--images",
            images.path().to_str().unwrap(),
            "--bind",
            "127.0.0.1:0",
            "--cert",
            certs.join("cert.pem").to_str().unwrap(),
            "--key",
            certs.join("key.pem").to_str().unwrap(),
        ],
        1,
    );
    (s, certs)
}

#[test]
fn j46_reference_client_default_k_p4_batch_byte_identical() {
    let src = TempDir::new("j46src");
    write_images(src.path(), &mixed_images());
    let (server, certs) = ferry_tls_server(&src);
    let client = RefClient::new(&server.addr("jtp"), &certs.join("ca.pem"), "localhost");
    let listed = client.list();
    assert_eq!(listed.len(), mixed_images().len());
    for (ka, p, batch) in [
        (false, 1, false),
        (true, 1, false),
        (false, 4, false),
        (true, 4, false),
        (false, 1, true),
    ] {
        let out = TempDir::new("j46out");
        client.download(out.path(), ka, p, batch);
        assert_eq!(
            harness::tree(out.path()),
            harness::tree(src.path()),
            "mode -k {ka} -p {p} batch {batch}"
        );
    }
}

#[test]
fn j46_reference_client_generated_cert_by_ip_and_localhost() {
    let src = TempDir::new("j46gen");
    write_images(src.path(), &mixed_images()[..3]);
    let s = Server::start(
        &[
            "jtp",
            "serve",
            "--images",
            src.path().to_str().unwrap(),
            "--bind",
            "127.0.0.1:0",
        ],
        1,
    );
    let cert = src.join(".ferry/tls/cert.pem");
    for name in ["localhost", "127.0.0.1"] {
        let out = TempDir::new("j46genout");
        RefClient::new(&s.addr("jtp"), &cert, name).download(out.path(), false, 1, false);
        assert_eq!(harness::tree(out.path()), harness::tree(src.path()));
    }
}

#[test]
fn j46_reference_client_300_images_with_k_and_p4() {
    let src = TempDir::new("j46big");
    let imgs: Vec<Image> = (0..300)
        .map(|i| Image::new(&format!("img{i:03}.png"), rnd(i + 100, 200 + i as usize)))
        .collect();
    write_images(src.path(), &imgs);
    let (server, certs) = ferry_tls_server(&src);
    let client = RefClient::new(&server.addr("jtp"), &certs.join("ca.pem"), "localhost");
    for (ka, p) in [(true, 1), (false, 4)] {
        let out = TempDir::new("j46bigout");
        client.download(out.path(), ka, p, false);
        assert_eq!(
            harness::tree(out.path()),
            harness::tree(src.path()),
            "-k {ka} -p {p}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// J47: ferry's client against the reference server.

fn get_from(addr: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "jtp",
        "get",
        "--addr",
        addr,
        "--out",
        out.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    ferry(&args, T)
}

#[test]
fn j47_ferry_client_from_reference_server_plain_all_modes() {
    let imgs = mixed_images();
    let src = TempDir::new("j47src");
    write_images(src.path(), &imgs);
    let peer = Peer::plain(ref_server(imgs, None));
    for mode in [
        &[][..],
        &["-k"],
        &["-p", "4"],
        &["--batch"],
        &["--list-and-get"],
        &["-k", "--repeat", "2"],
    ] {
        let out = TempDir::new("j47out");
        let mut extra = vec!["--no-tls"];
        extra.extend_from_slice(mode);
        let o = get_from(&peer.addr, out.path(), &extra);
        assert_eq!(
            o.status.code(),
            Some(0),
            "mode {mode:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(
            harness::tree(out.path()),
            harness::tree(src.path()),
            "mode {mode:?}"
        );
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(j["corrupt"].as_array().unwrap().len(), 0);
    }
    // `ferry jtp list` shows the reference's catalog with original sizes.
    let o = ferry(
        &["jtp", "list", "--no-tls", "--json", "--addr", &peer.addr],
        T,
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let l: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let l = l.as_array().unwrap();
    assert_eq!(l.len(), mixed_images().len());
    for (got, want) in l.iter().zip(mixed_images()) {
        assert_eq!(got["name"], want.name.as_str());
        assert_eq!(got["size"], want.data.len() as u64);
        assert_eq!(got["id"], hex(want.id()).as_str());
    }
}

#[test]
fn j47_ferry_client_from_reference_server_tls_without_close_notify() {
    let imgs = mixed_images();
    let src = TempDir::new("j47tsrc");
    write_images(src.path(), &imgs);
    let certs = TempDir::new("j47certs");
    let o = ferry(&["certs", "--out", certs.path().to_str().unwrap()], T);
    assert!(o.status.success());
    let peer = Peer::tls(
        &certs.join("cert.pem"),
        &certs.join("key.pem"),
        &[],
        ref_server(imgs, None),
    );
    let ca = certs.join("ca.pem");
    for mode in [&[][..], &["-k"], &["-p", "4"], &["--batch"]] {
        let out = TempDir::new("j47tout");
        let mut extra = vec!["--cert", ca.to_str().unwrap(), "--server-name", "localhost"];
        extra.extend_from_slice(mode);
        let o = get_from(&peer.addr, out.path(), &extra);
        assert_eq!(
            o.status.code(),
            Some(0),
            "mode {mode:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(
            harness::tree(out.path()),
            harness::tree(src.path()),
            "mode {mode:?}"
        );
    }
    // The reference server offers no ALPN: nothing was negotiated, and ferry accepted that.
    assert!(peer.alpn.lock().unwrap().iter().all(|a| a.is_none()));
}

#[test]
fn j47_reference_rate_limit_jtpe5_is_reported() {
    let imgs = mixed_images();
    // LIST is the first connection; the GET connection gets the unsolicited JTPE 5.
    let peer = Peer::plain(ref_server(imgs, Some(1)));
    let out = TempDir::new("j47rl");
    let o = get_from(&peer.addr, out.path(), &["--no-tls"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(err.contains("error 5: too many requests"), "{err}");
    assert!(harness::tree(out.path()).is_empty());
}

// ---------------------------------------------------------------------------------------------
// The reference server's CANCEL check (issue: `-k` failed against it once a second request
// followed a GET_BY_ID on one connection).

/// The emulation really is hostile to pipelining: a LIST sent behind a GET_BY_ID, in the same
/// write, loses its bytes to the CANCEL check and is never answered.
#[test]
fn j47_emulated_reference_drops_a_request_pipelined_behind_get_by_id() {
    let imgs: Vec<Image> = (0..2u64)
        .map(|i| Image::new(&format!("p{i}.png"), rnd(900 + i, 100)))
        .collect();
    let dropped = Arc::new(AtomicUsize::new(0));
    let peer = Peer::plain(ref_server_counting(imgs.clone(), None, dropped.clone()));
    let mut s = TcpStream::connect(&peer.addr).unwrap();
    s.set_read_timeout(Some(SOCKET_TIMEOUT)).unwrap();
    let mut req = vec![0, 1, 2];
    for i in &imgs {
        req.extend_from_slice(&i.id().to_be_bytes());
    }
    req.extend_from_slice(&[1, 1]); // LIST, pipelined
    s.write_all(&req).unwrap();
    expect_magic(&mut s, b"JTPD");
    let mut m = [0u8; 1];
    s.read_exact(&mut m).unwrap();
    assert_eq!(m[0], 2);
    let out = TempDir::new("j47drop");
    let names = imgs.iter().map(|i| (i.id(), i.name.clone())).collect();
    for _ in 0..2 {
        save_packet(&mut s, out.path(), &names);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while dropped.load(Ordering::SeqCst) < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    // One byte after each packet: both bytes of the LIST.
    assert_eq!(dropped.load(Ordering::SeqCst), 2);
    assert_eq!(
        peer.requests().len(),
        1,
        "the pipelined LIST must not be read: {:?}",
        peer.requests()
    );
}

/// 300 images: GET chunks of 255 and 45 on one connection, and with `-p 4` 75 ids per worker
/// whose connections carry the second pass's LIST and GETs; every mode completes against the
/// emulated reference, plain and TLS, and its CANCEL check never finds a byte to drop.
#[test]
fn j47_keep_alive_modes_complete_against_the_reference_cancel_check_plain_and_tls() {
    let imgs: Vec<Image> = (0..300u64)
        .map(|i| {
            Image::new(
                &format!("r{i:03}.png"),
                rnd(2 * i + 5001, 50 + i as usize % 7),
            )
        })
        .collect();
    let src = TempDir::new("j47habit");
    write_images(src.path(), &imgs);
    let certs = TempDir::new("j47habitcerts");
    let o = ferry(&["certs", "--out", certs.path().to_str().unwrap()], T);
    assert!(o.status.success());
    let ca = certs.join("ca.pem");
    for tls in [false, true] {
        for (mode, conns) in [
            (&["-k"][..], 1),
            (&["-k", "--repeat", "2"], 1),
            (&["-p", "4", "-k", "--repeat", "2"], 4),
        ] {
            let dropped = Arc::new(AtomicUsize::new(0));
            let handler = ref_server_counting(imgs.clone(), None, dropped.clone());
            let peer = if tls {
                Peer::tls(
                    &certs.join("cert.pem"),
                    &certs.join("key.pem"),
                    &[],
                    handler,
                )
            } else {
                Peer::plain(handler)
            };
            let out = TempDir::new("j47habitout");
            let mut extra: Vec<&str> = if tls {
                vec!["--cert", ca.to_str().unwrap(), "--server-name", "localhost"]
            } else {
                vec!["--no-tls"]
            };
            extra.extend_from_slice(mode);
            let o = get_from(&peer.addr, out.path(), &extra);
            let what = format!("tls {tls} {mode:?}");
            assert_eq!(
                o.status.code(),
                Some(0),
                "{what}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert_eq!(
                harness::tree(out.path()),
                harness::tree(src.path()),
                "{what}"
            );
            assert_eq!(dropped.load(Ordering::SeqCst), 0, "{what}: bytes eaten");
            assert_eq!(peer.conns.load(Ordering::SeqCst), conns, "{what}");
            let reqs = peer.requests();
            assert!(reqs.iter().all(|(_, r)| r.keep_alive()), "{what}: {reqs:?}");
            let repeat = if mode.contains(&"--repeat") { 2 } else { 1 };
            let lists = reqs
                .iter()
                .filter(|(_, r)| matches!(r, Req::List { .. }))
                .count();
            assert_eq!(lists, repeat, "{what}");
        }
    }
}

/// Runs `ferry ARGS...` with stderr on a pseudo-terminal (stdout and stdin are not); returns the
/// exit code and what it wrote on the terminal. Panics past `timeout`.
pub fn ferry_with_tty_stderr(args: &[&str], timeout: Duration) -> (Option<i32>, String) {
    use std::os::fd::{FromRawFd, OwnedFd};
    let (mut master, mut slave): (libc::c_int, libc::c_int) = (-1, -1);
    // SAFETY: openpty writes two new fds into the given ints; name, termios and winsize may be
    // null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", io::Error::last_os_error());
    // SAFETY: both fds were just created by openpty and are owned by nobody else.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut child = {
        let mut cmd = std::process::Command::new(harness::FERRY);
        cmd.args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::from(slave));
        cmd.spawn().unwrap()
        // `cmd` drops here with our copy of the slave, so the master reads EIO once the
        // child has exited.
    };
    let mut master = std::fs::File::from(master);
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            v.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&v).into_owned()
    });
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ferry {args:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (status.code(), reader.join().unwrap())
}
