//! Transports: TCP, TLS 1.3 (rustls) and Unix stream sockets behind one [`Stream`], and the UDP
//! socket set-up CJP2P needs ([`bind_udp`]) beside it.
//!
//! Every stream protocol's driver talks to a [`Stream`]: read into a buffer, write all,
//! timeouts, peer address, a non-blocking [`Stream::try_read`] for "has the peer said anything?"
//! checks while sending, an orderly [`Stream::close_gracefully`], and [`Stream::plain_fd`] so a
//! driver can move file bytes from a mapping straight onto a plain socket with `send(2)`. TLS
//! configuration ([`TlsServer`], [`TlsClient`], [`TlsStream`]) and certificates (loading PEM
//! files, the self-signed certificate generated into `.ferry/tls/`, the test CA of `make certs`,
//! fingerprints) live here too, as do the small socket helpers every side shares:
//! [`connect_tcp`] with timeouts, [`wait_readable`] and [`canonical_addr`].
//!
//! All sockets are blocking `std::net`/`std::os::unix::net` sockets; there is no async runtime.
//! Out of scope: listening and accepting (the `server` module), protocol framing (the `proto`
//! modules), and anything that interprets the bytes.
//!
//! End of stream: a TLS peer that closes TCP without close_notify reads as an ordinary end of
//! stream (`Ok(0)`, [`TryRead::Eof`]). The JTP spec (3.9) requires accepting a bare FIN after a
//! complete frame, so truncation is detected by the framing layer, not here.
//!
//! Deadlines: a plain stream's reads and writes are bounded by the socket's SO_RCVTIMEO and
//! SO_SNDTIMEO. A TLS stream keeps exactly those deadlines: it drives rustls itself
//! ([`TlsStream`]), one `write_tls` per write(2), and a write that times out fails the stream
//! (later writes, flushes and the close_notify fail at once), where `rustls::StreamOwned` would
//! swallow the timeout and block in a read.
//!
//! Peers: [`Peer`] is the one spelling of "who is at the other end" for logs and per-peer
//! tables, with IPv4-mapped addresses folded by [`canonical_addr`].

mod certs;
mod tls;

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustls::{ConnectionCommon, SideData};

pub use certs::{fingerprint, load_certs, load_key, write_test_certs};
pub use tls::{TlsClient, TlsServer, TlsStream};

/// Most bytes [`Stream::close_gracefully`] reads and discards while lingering.
pub const MAX_LINGER_DISCARD: usize = 64 * 1024;

/// A connected byte stream of any kind.
pub enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// A Unix stream socket.
    Unix(UnixStream),
    /// The server side of a TLS 1.3 connection whose handshake is complete.
    TlsServer(Box<TlsStream<rustls::ServerConnection>>),
    /// The client side of a TLS 1.3 connection whose handshake is complete.
    TlsClient(Box<TlsStream<rustls::ClientConnection>>),
}

/// Who is at the other end of a connection: the one spelling used by log lines, rate limits
/// and per-peer tables. Build TCP peers with `Peer::from(addr)`, which folds an IPv4-mapped
/// address into the IPv4 address it carries ([`canonical_addr`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    /// A TCP peer (plain or TLS), its address canonical.
    Tcp(SocketAddr),
    /// A Unix stream socket peer (its address says nothing useful).
    Unix,
    /// The address could not be read (the socket is no longer connected).
    Unknown,
}

impl Peer {
    /// The peer's IP address, for per-address accounting; `None` for Unix and unknown peers.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Peer::Tcp(a) => Some(a.ip()),
            Peer::Unix | Peer::Unknown => None,
        }
    }
}

impl From<SocketAddr> for Peer {
    fn from(addr: SocketAddr) -> Peer {
        Peer::Tcp(canonical_addr(addr))
    }
}

/// `127.0.0.1:5555`, `[::1]:5`, `unix` or `unknown`.
impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(a) => write!(f, "{a}"),
            Peer::Unix => f.write_str("unix"),
            Peer::Unknown => f.write_str("unknown"),
        }
    }
}

/// Outcome of [`Stream::try_read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryRead {
    /// This many bytes were copied into the buffer.
    Data(usize),
    /// Nothing has arrived yet; the connection is still open.
    Empty,
    /// The peer closed its sending side (close_notify or FIN).
    Eof,
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Stream::Tcp(_) => "tcp",
            Stream::Unix(_) => "unix",
            Stream::TlsServer(_) => "tls-server",
            Stream::TlsClient(_) => "tls-client",
        };
        write!(f, "Stream({kind} {})", self.peer())
    }
}

impl From<TcpStream> for Stream {
    fn from(s: TcpStream) -> Stream {
        Stream::Tcp(s)
    }
}

impl From<UnixStream> for Stream {
    fn from(s: UnixStream) -> Stream {
        Stream::Unix(s)
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
            Stream::TlsServer(s) => s.read(buf),
            Stream::TlsClient(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
            Stream::TlsServer(s) => s.write(buf),
            Stream::TlsClient(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Unix(s) => s.write_vectored(bufs),
            Stream::TlsServer(s) => s.write_vectored(bufs),
            Stream::TlsClient(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
            Stream::TlsServer(s) => s.flush(),
            Stream::TlsClient(s) => s.flush(),
        }
    }
}

impl Stream {
    /// The TCP socket under a plain or TLS stream.
    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Tcp(s) => Some(s),
            Stream::Unix(_) => None,
            Stream::TlsServer(s) => Some(&s.sock),
            Stream::TlsClient(s) => Some(&s.sock),
        }
    }

    /// The socket's fd, whatever runs over it.
    fn socket_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::TlsServer(s) => s.sock.as_raw_fd(),
            Stream::TlsClient(s) => s.sock.as_raw_fd(),
        }
    }

    /// Sets the socket's read timeout (`None`: block forever).
    pub fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(d),
            _ => self.tcp().map_or(Ok(()), |t| t.set_read_timeout(d)),
        }
    }

    /// Sets the socket's write timeout (`None`: block forever).
    pub fn set_write_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_write_timeout(d),
            _ => self.tcp().map_or(Ok(()), |t| t.set_write_timeout(d)),
        }
    }

    /// The write timeout in force (SO_SNDTIMEO), if any.
    pub fn write_timeout(&self) -> Option<Duration> {
        match self {
            Stream::Unix(s) => s.write_timeout().ok().flatten(),
            _ => self.tcp().and_then(|t| t.write_timeout().ok().flatten()),
        }
    }

    /// The peer ([`Peer::Unknown`] once the socket is no longer connected).
    pub fn peer(&self) -> Peer {
        match self {
            Stream::Unix(_) => Peer::Unix,
            _ => self
                .tcp()
                .and_then(|t| t.peer_addr().ok())
                .map_or(Peer::Unknown, Peer::from),
        }
    }

    /// Whether this stream is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::TlsServer(_) | Stream::TlsClient(_))
    }

    /// The raw fd when bytes written to it go straight onto the wire (plain TCP and Unix): the
    /// caller may then send file bytes from a mapping with `send(2)`, interleaved with ordinary
    /// writes through this `Stream` (nothing is buffered here). `None` for TLS.
    pub fn plain_fd(&self) -> Option<RawFd> {
        match self {
            Stream::Tcp(s) => Some(s.as_raw_fd()),
            Stream::Unix(s) => Some(s.as_raw_fd()),
            Stream::TlsServer(_) | Stream::TlsClient(_) => None,
        }
    }

    /// Non-blocking read of whatever has already arrived; never waits. On TLS, records already
    /// in the socket buffer are decrypted; a partial record reads as [`TryRead::Empty`]. An empty
    /// `buf` gives `Data(0)`. A TLS protocol error (bad record, fatal alert) is `InvalidData`.
    pub fn try_read(&mut self, buf: &mut [u8]) -> io::Result<TryRead> {
        if buf.is_empty() {
            return Ok(TryRead::Data(0));
        }
        match self {
            Stream::Tcp(_) | Stream::Unix(_) => {
                let mut raw = DontWait(self.socket_fd());
                match raw.read(buf) {
                    Ok(0) => Ok(TryRead::Eof),
                    Ok(n) => Ok(TryRead::Data(n)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(TryRead::Empty),
                    Err(e) => Err(e),
                }
            }
            Stream::TlsServer(s) => {
                let fd = s.sock.as_raw_fd();
                tls_try_read(&mut s.conn, fd, buf)
            }
            Stream::TlsClient(s) => {
                let fd = s.sock.as_raw_fd();
                tls_try_read(&mut s.conn, fd, buf)
            }
        }
    }

    /// Orderly close: flush; on TLS send close_notify; shut down our sending side; then read and
    /// discard input for up to `linger` (at most [`MAX_LINGER_DISCARD`] bytes) so that unread
    /// input cannot turn the close into an RST that destroys our last bytes in flight. Errors are
    /// ignored: the connection is over either way. Each step is bounded by the write timeout, and
    /// on TLS a flush that timed out skips the close_notify (one deadline, not two).
    pub fn close_gracefully(mut self, linger: Duration) {
        let _ = self.flush();
        match &mut self {
            Stream::TlsServer(s) => s.send_close_notify(),
            Stream::TlsClient(s) => s.send_close_notify(),
            Stream::Tcp(_) | Stream::Unix(_) => {}
        }
        match &self {
            Stream::Unix(s) => {
                let _ = s.shutdown(Shutdown::Write);
            }
            _ => {
                if let Some(t) = self.tcp() {
                    let _ = t.shutdown(Shutdown::Write);
                }
            }
        }
        if linger.is_zero() {
            return;
        }
        let deadline = Instant::now() + linger;
        let mut discarded = 0usize;
        let mut scratch = [0u8; 8192];
        while discarded < MAX_LINGER_DISCARD {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() || self.set_read_timeout(Some(remaining)).is_err() {
                break;
            }
            let want = scratch.len().min(MAX_LINGER_DISCARD - discarded);
            // Read the raw socket, not the TLS layer: the bytes are thrown away anyway.
            let n = match &self {
                Stream::Unix(s) => (&*s).read(&mut scratch[..want]),
                _ => match self.tcp() {
                    Some(mut t) => t.read(&mut scratch[..want]),
                    None => break,
                },
            };
            match n {
                Ok(0) => break,
                Ok(n) => discarded += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }

    /// Sets TCP_NODELAY; a no-op for Unix sockets.
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.tcp().map_or(Ok(()), |t| t.set_nodelay(on))
    }

    /// The ALPN protocol negotiated on a TLS stream (`None` if none was, or for plain streams).
    pub fn alpn(&self) -> Option<Vec<u8>> {
        match self {
            Stream::TlsServer(s) => s.conn.alpn_protocol().map(|p| p.to_vec()),
            Stream::TlsClient(s) => s.conn.alpn_protocol().map(|p| p.to_vec()),
            Stream::Tcp(_) | Stream::Unix(_) => None,
        }
    }
}

/// A reader over a socket fd that never blocks: `recv(MSG_DONTWAIT)`.
struct DontWait(RawFd);

impl Read for DontWait {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is a valid writable region of `buf.len()` bytes for the duration of
            // the call; `self.0` is a socket fd owned by the `Stream` that created this reader
            // and outlives it.
            let n = unsafe {
                libc::recv(
                    self.0,
                    buf.as_mut_ptr().cast::<libc::c_void>(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// [`Stream::try_read`] for TLS: plaintext already decrypted first, then whatever records the
/// socket already holds, never waiting.
fn tls_try_read<D: SideData>(
    conn: &mut ConnectionCommon<D>,
    fd: RawFd,
    buf: &mut [u8],
) -> io::Result<TryRead> {
    loop {
        match conn.reader().read(buf) {
            Ok(0) => return Ok(TryRead::Eof),
            Ok(n) => return Ok(TryRead::Data(n)),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(TryRead::Eof),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        match conn.read_tls(&mut DontWait(fd)) {
            // Ok(0) is a FIN: rustls records it, and the reader above then reports the end.
            Ok(_) => {
                conn.process_new_packets()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(TryRead::Empty),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Errors of the transport layer: sockets, TLS and certificate files.
#[derive(Debug)]
pub enum TransportError {
    /// A socket or file operation failed; `what` says which ("tcp: connect to 1.2.3.4:5").
    Io { what: String, source: io::Error },
    /// rustls refused a configuration.
    Tls(rustls::Error),
    /// The TLS handshake with `peer` failed (bad certificate, alert received, no common
    /// protocol version or ALPN, ...). The alert we chose, if any, was sent.
    Handshake { peer: String, error: rustls::Error },
    /// A PEM file could be read but holds nothing usable.
    Pem { path: PathBuf, detail: String },
    /// A certificate could not be generated, or a certificate and key do not work together.
    Cert(String),
    /// One file of the self-signed pair exists without the other; ferry will not overwrite it.
    PartialKeyPair { present: PathBuf, missing: PathBuf },
    /// The name to verify the server certificate against is neither a DNS name nor an IP.
    ServerName(String),
    /// A "host:port" did not resolve to any address.
    Resolve { addr: String, detail: String },
    /// An operation ran past its deadline; names the operation ("tls handshake").
    Timeout(&'static str),
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::Io { what, source } => write!(f, "{what}: {source}"),
            TransportError::Tls(e) => write!(f, "tls: {e}"),
            TransportError::Handshake { peer, error } => {
                write!(f, "tls: handshake with {peer}: {error}")
            }
            TransportError::Pem { path, detail } => {
                write!(f, "pem: {}: {detail}", path.display())
            }
            TransportError::Cert(detail) => write!(f, "certificate: {detail}"),
            TransportError::PartialKeyPair { present, missing } => write!(
                f,
                "tls: {} exists but {} is missing; restore it, or remove both to generate a new pair",
                present.display(),
                missing.display()
            ),
            TransportError::ServerName(name) => {
                write!(f, "tls: invalid server name {name:?} (want a dns name or ip address)")
            }
            TransportError::Resolve { addr, detail } => write!(f, "tcp: resolve {addr}: {detail}"),
            TransportError::Timeout(what) => write!(f, "timeout: {what}"),
        }
    }
}

/// What a failed client connection most likely means, so that a client's error message can say
/// what to do about it (each client names its own flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientHint {
    /// The TLS handshake met bytes that are not TLS: the server speaks plain TCP.
    PeerIsPlain,
    /// The server's certificate chains to no trusted root (a `ferry serve` certificate is
    /// self-signed): the client needs `--cert`.
    UnknownIssuer,
    /// The server's certificate does not name the host asked for.
    WrongName,
}

impl TransportError {
    /// The likely cause of a failed client connection, when the error shows one.
    pub fn client_hint(&self) -> Option<ClientHint> {
        use rustls::CertificateError as C;
        let TransportError::Handshake { error, .. } = self else {
            return None;
        };
        match error {
            rustls::Error::InvalidMessage(_) => Some(ClientHint::PeerIsPlain),
            rustls::Error::InvalidCertificate(C::UnknownIssuer) => Some(ClientHint::UnknownIssuer),
            rustls::Error::InvalidCertificate(
                C::NotValidForName | C::NotValidForNameContext { .. },
            ) => Some(ClientHint::WrongName),
            _ => None,
        }
    }
}

/// Whether `first`, the first bytes a plain-TCP client read, open a TLS record (handshake `16
/// 03 0x` or alert `15 03 0x`): what a TLS server sends a client that does not speak TLS.
/// Socket buffer asked for on Unix stream sockets (both directions). The kernel's default
/// (`net.core.wmem_default`, about 208 KiB) is far below what loopback TCP autotunes to, so a
/// peer with a window of writes in flight (filestorage: 32 TRANSFERs of 64 KiB) blocked on a
/// full Unix socket where the same transfer over TCP did not. The kernel caps it at
/// `net.core.wmem_max`/`rmem_max`; failures are ignored (the default then stays).
pub const UNIX_SOCKET_BUFFER: usize = 4 << 20;

/// Asks for [`UNIX_SOCKET_BUFFER`] bytes of send and receive buffer on a Unix stream socket.
pub fn size_unix_buffers(s: &UnixStream) {
    use std::os::fd::AsRawFd;
    let v = UNIX_SOCKET_BUFFER as libc::c_int;
    for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        // SAFETY: setsockopt reads one c_int from a valid pointer; the fd is open for the call.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

pub fn is_tls_record(first: &[u8]) -> bool {
    matches!(first, [0x15 | 0x16, 0x03, 0x00..=0x04, ..])
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TransportError::Io { source, .. } => Some(source),
            TransportError::Tls(e) | TransportError::Handshake { error: e, .. } => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for TransportError {
    fn from(source: io::Error) -> TransportError {
        TransportError::Io {
            what: "io".to_string(),
            source,
        }
    }
}

/// The one spelling of a peer address: an IPv4-mapped IPv6 address (`[::ffff:1.2.3.4]:5`, what a
/// dual-stack socket reports for an IPv4 peer) becomes the IPv4 address it carries, so tables
/// keyed by peer, rate limits and log lines see one peer, not two.
pub fn canonical_addr(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Waits until `fd` is readable (or has an error or hang-up to report) or `timeout` passes.
/// True when readable. For loops that must also look at a flag or a clock while waiting.
pub fn wait_readable(fd: RawFd, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: `p` is a valid pollfd for the duration of the call; nfds is 1.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    n > 0
}

/// As [`wait_readable`], also returning early when `wake` (an eventfd another thread writes)
/// is readable. True when `fd` is readable.
pub fn wait_readable_or_woken(fd: RawFd, wake: RawFd, timeout: Duration) -> bool {
    let mut p = [
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: wake,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: `p` is a valid array of two pollfds for the duration of the call.
    let n = unsafe { libc::poll(p.as_mut_ptr(), 2, ms) };
    n > 0 && p[0].revents != 0
}

/// The MTU of the route to `dest` as the kernel knows it (a UDP socket connected to it, never
/// sent on, asked for `IP_MTU` / `IPV6_MTU`): 1500 on most links, 65,536 on loopback. None when
/// there is no route or the kernel does not say.
pub fn path_mtu(dest: SocketAddr) -> Option<u32> {
    let dest = canonical_addr(dest);
    let (bind, level, opt): (SocketAddr, _, _) = match dest {
        SocketAddr::V4(_) => (
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            libc::IPPROTO_IP,
            libc::IP_MTU,
        ),
        SocketAddr::V6(_) => (
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU,
        ),
    };
    let sock = UdpSocket::bind(bind).ok()?;
    sock.connect(dest).ok()?;
    let mut mtu: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `mtu`, a live local of that size.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            level,
            opt,
            (&mut mtu as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (r == 0 && mtu > 0).then_some(mtu as u32)
}

/// TCP connect to "host:port" with a timeout per address (resolves, tries each address in
/// order), returning a socket whose read and write timeouts are set to `timeout`.
pub fn connect_tcp(addr: &str, timeout: Duration) -> Result<TcpStream, TransportError> {
    let addrs = addr
        .to_socket_addrs()
        .map_err(|e| TransportError::Resolve {
            addr: addr.to_string(),
            detail: e.to_string().to_lowercase(),
        })?;
    let mut last = None;
    for sa in addrs {
        match TcpStream::connect_timeout(&sa, timeout) {
            Ok(s) => {
                let io_err = |source| TransportError::Io {
                    what: format!("tcp: configure {sa}"),
                    source,
                };
                s.set_read_timeout(Some(timeout)).map_err(io_err)?;
                s.set_write_timeout(Some(timeout)).map_err(io_err)?;
                return Ok(s);
            }
            Err(e) => last = Some((sa, e)),
        }
    }
    match last {
        Some((sa, source)) => Err(TransportError::Io {
            what: format!("tcp: connect to {sa}"),
            source,
        }),
        None => Err(TransportError::Resolve {
            addr: addr.to_string(),
            detail: "no addresses".to_string(),
        }),
    }
}

/// UDP socket bound to `addr` with SO_RCVBUF and SO_SNDBUF raised to `buf_bytes`. Tries the
/// privileged `*BUFFORCE` options first (they exceed `net.core.{r,w}mem_max` when allowed) and
/// falls back to the plain ones. Returns the smaller of the two sizes the kernel then reports;
/// note that Linux reports twice the usable size (it counts its bookkeeping).
pub fn bind_udp(addr: &str, buf_bytes: usize) -> Result<(UdpSocket, usize), TransportError> {
    let sock = UdpSocket::bind(addr).map_err(|source| TransportError::Io {
        what: format!("udp: bind {addr}"),
        source,
    })?;
    let fd = sock.as_raw_fd();
    let want = buf_bytes.min(libc::c_int::MAX as usize / 2) as libc::c_int;
    let mut granted = usize::MAX;
    for (force, plain, name) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, "SO_RCVBUF"),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, "SO_SNDBUF"),
    ] {
        if setsockopt_int(fd, force, want).is_err() {
            setsockopt_int(fd, plain, want).map_err(|source| TransportError::Io {
                what: format!("udp: set {name} on {addr}"),
                source,
            })?;
        }
        let got = getsockopt_int(fd, plain).map_err(|source| TransportError::Io {
            what: format!("udp: get {name} on {addr}"),
            source,
        })?;
        granted = granted.min(got.max(0) as usize);
    }
    Ok((sock, granted))
}

fn setsockopt_int(fd: RawFd, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `fd` is an open socket owned by the caller; the option value points to a live
    // c_int and its exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&value as *const libc::c_int).cast::<libc::c_void>(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn getsockopt_int(fd: RawFd, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is an open socket owned by the caller; `value` and `len` are live locals
    // and `len` holds the size of `value`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut value as *mut libc::c_int).cast::<libc::c_void>(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
pub(crate) mod tests;
