//! Listener configuration and binding: what a listener is (TCP address or Unix socket path),
//! how its connections are set up (TLS, preamble, timeouts, TCP_NODELAY) and how many it may
//! hold at once. Plain data until [`ListenerConfig::bind`]; the accept loop and the connection
//! set-up read it from there.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::transport::{Peer, TlsServer};

/// Default of [`ListenerConfig::io_timeout`].
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of [`ListenerConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default of [`ListenerConfig::close_linger`].
pub const DEFAULT_CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Where a listener listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    /// A TCP address, `host:port` (port 0 picks a free one).
    Tcp(String),
    /// A Unix stream socket at this path.
    Unix(PathBuf),
}

/// A fixed greeting the client sends before anything else (libIPC tcpd style): exactly
/// `expect` (no length, no terminator), answered with `reply`. A wrong byte, an early end or
/// silence past the handshake timeout closes the connection without a byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preamble {
    pub expect: Vec<u8>,
    pub reply: Vec<u8>,
}

/// How one listener accepts and sets up its connections (tiny_http style). Build it, then
/// [`bind`](Self::bind) it and hand the [`Listener`] with its service to
/// [`ServerBuilder::listener`](super::ServerBuilder::listener).
///
/// ```
/// use std::time::Duration;
/// use ferry::server::ListenerConfig;
///
/// let cfg = ListenerConfig::tcp("127.0.0.1:0")
///     .preamble(b"filestorage", b"ok")
///     .handshake_timeout(Duration::from_secs(10))
///     .io_timeout(Duration::from_secs(30))
///     .max_connections(64);
/// let l = cfg.bind().unwrap();
/// assert!(l.local_addr().starts_with("127.0.0.1:"));
/// ```
#[derive(Clone)]
pub struct ListenerConfig {
    pub(super) kind: ListenerKind,
    pub(super) tls: Option<TlsServer>,
    pub(super) preamble: Option<Preamble>,
    pub(super) handshake_timeout: Option<Duration>,
    pub(super) io_timeout: Duration,
    pub(super) nodelay: bool,
    pub(super) max_connections: usize,
    pub(super) shared_budget: Option<ConnectionBudget>,
    pub(super) close_linger: Duration,
    pub(super) label: Option<String>,
    pub(super) verbose: bool,
}

impl fmt::Debug for ListenerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerConfig")
            .field("kind", &self.kind)
            .field("tls", &self.tls.is_some())
            .field("preamble", &self.preamble)
            .field("handshake_timeout", &self.setup_timeout())
            .field("io_timeout", &self.io_timeout)
            .field("nodelay", &self.nodelay)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl ListenerConfig {
    fn new(kind: ListenerKind) -> ListenerConfig {
        ListenerConfig {
            kind,
            tls: None,
            preamble: None,
            handshake_timeout: None,
            io_timeout: DEFAULT_IO_TIMEOUT,
            nodelay: true,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            shared_budget: None,
            close_linger: DEFAULT_CLOSE_LINGER,
            label: None,
            verbose: false,
        }
    }

    /// A TCP listener on `addr` (`host:port`).
    pub fn tcp(addr: impl Into<String>) -> ListenerConfig {
        Self::new(ListenerKind::Tcp(addr.into()))
    }

    /// A Unix stream socket listener at `path`. A socket file left there by a process that is
    /// gone is replaced; anything else at the path (a live socket, a file, a link) is an error.
    pub fn unix(path: impl Into<PathBuf>) -> ListenerConfig {
        Self::new(ListenerKind::Unix(path.into()))
    }

    /// TLS 1.3 with this certificate and ALPN list (TCP only). The handshake runs on the worker.
    pub fn tls(mut self, tls: TlsServer) -> Self {
        self.tls = Some(tls);
        self
    }

    /// [`tls`](Self::tls) when `Some`.
    pub fn tls_opt(mut self, tls: Option<TlsServer>) -> Self {
        self.tls = tls;
        self
    }

    /// The client must open with exactly `expect`; the server answers `reply` (after the TLS
    /// handshake on a TLS listener). See [`Preamble`].
    pub fn preamble(mut self, expect: &[u8], reply: &[u8]) -> Self {
        self.preamble = Some(Preamble {
            expect: expect.to_vec(),
            reply: reply.to_vec(),
        });
        self
    }

    /// Time allowed for the TLS handshake, and again for the preamble. Default: the io timeout.
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.handshake_timeout = Some(d);
        self
    }

    /// SO_RCVTIMEO and SO_SNDTIMEO of every accepted socket, set before its first byte: a write
    /// without progress for this long fails, as does a set-up read. Services may set shorter or
    /// longer read timeouts per phase. Default 30 s; at least 1 ms.
    pub fn io_timeout(mut self, d: Duration) -> Self {
        self.io_timeout = d.max(Duration::from_millis(1));
        self
    }

    /// TCP_NODELAY on accepted TCP sockets. Default on.
    pub fn nodelay(mut self, on: bool) -> Self {
        self.nodelay = on;
        self
    }

    /// Connections this listener holds at once (being set up or served). One more is refused at
    /// once: the service's busy reply on a plain listener without preamble, else a close without
    /// a byte. Each listener has its own budget. Default 1024; at least 1.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Counts this listener's connections against `budget`, which other listeners may share
    /// (filestorage's endpoints have one limit together), instead of its own
    /// [`max_connections`](Self::max_connections).
    pub fn shared_budget(mut self, budget: &ConnectionBudget) -> Self {
        self.max_connections = budget.0.max;
        self.shared_budget = Some(budget.clone());
        self
    }

    /// How long a refusal sent after set-up ([`Admission::Reply`](super::Admission::Reply))
    /// lingers for the peer's input before closing. Default 1 s.
    pub fn close_linger(mut self, d: Duration) -> Self {
        self.close_linger = d;
        self
    }

    /// The protocol name in the `listening` line; default the service's name (a second
    /// listener of one service may say `filestorage-tls`).
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// Log failed set-ups (handshake, preamble) on stderr.
    pub fn verbose(mut self, on: bool) -> Self {
        self.verbose = on;
        self
    }

    /// The handshake timeout in force (the io timeout unless set).
    pub(super) fn setup_timeout(&self) -> Duration {
        self.handshake_timeout.unwrap_or(self.io_timeout)
    }

    /// Binds the socket (and starts listening, so connections queue in the backlog until the
    /// server starts).
    pub fn bind(self) -> io::Result<Listener> {
        let socket = match &self.kind {
            ListenerKind::Tcp(addr) => ListenSocket::Tcp(TcpListener::bind(addr)?),
            ListenerKind::Unix(path) => {
                if self.tls.is_some() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "tls over a unix socket is not supported",
                    ));
                }
                bind_unix(path)?
            }
        };
        socket.set_nonblocking()?;
        let local_addr = socket.local_addr();
        Ok(Listener {
            socket,
            local_addr,
            cfg: self,
        })
    }
}

/// A bound listener with its configuration, ready for a server.
pub struct Listener {
    pub(super) socket: ListenSocket,
    local_addr: String,
    pub(super) cfg: ListenerConfig,
}

impl Listener {
    /// The address for the `listening` line: `127.0.0.1:5555`, `[::1]:5`, `unix:/run/x.sock`.
    pub fn local_addr(&self) -> String {
        self.local_addr.clone()
    }

    /// The bound TCP address (`None` for Unix listeners).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match &self.socket {
            ListenSocket::Tcp(l) => l.local_addr().ok(),
            ListenSocket::Unix { .. } => None,
        }
    }

    pub fn config(&self) -> &ListenerConfig {
        &self.cfg
    }
}

pub(super) enum ListenSocket {
    Tcp(TcpListener),
    /// `ident` is the (device, inode) of the socket file we created, so that only that file is
    /// removed when the listener goes away.
    Unix {
        listener: UnixListener,
        path: PathBuf,
        ident: Option<(u64, u64)>,
    },
}

/// An accepted socket, before any set-up.
pub(super) enum RawConn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl RawConn {
    pub(super) fn raw_fd(&self) -> RawFd {
        match self {
            RawConn::Tcp(s) => s.as_raw_fd(),
            RawConn::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl ListenSocket {
    fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            ListenSocket::Tcp(l) => l.set_nonblocking(true),
            ListenSocket::Unix { listener, .. } => listener.set_nonblocking(true),
        }
    }

    fn local_addr(&self) -> String {
        match self {
            ListenSocket::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into()),
            ListenSocket::Unix { path, .. } => format!("unix:{}", path.display()),
        }
    }

    pub(super) fn raw_fd(&self) -> RawFd {
        match self {
            ListenSocket::Tcp(l) => l.as_raw_fd(),
            ListenSocket::Unix { listener, .. } => listener.as_raw_fd(),
        }
    }

    /// One non-blocking accept. The accepted socket is blocking (its timeouts bound it).
    pub(super) fn accept(&self) -> io::Result<(RawConn, Peer)> {
        match self {
            ListenSocket::Tcp(l) => {
                let (s, a) = l.accept()?;
                s.set_nonblocking(false)?;
                Ok((RawConn::Tcp(s), Peer::from(a)))
            }
            ListenSocket::Unix { listener, .. } => {
                let (s, _) = listener.accept()?;
                s.set_nonblocking(false)?;
                Ok((RawConn::Unix(s), Peer::Unix))
            }
        }
    }
}

impl Drop for ListenSocket {
    fn drop(&mut self) {
        if let ListenSocket::Unix {
            path,
            ident: Some(ident),
            ..
        } = self
        {
            // Only the socket file we made: a path taken over since is someone else's.
            if let Ok(m) = std::fs::symlink_metadata(&*path) {
                if m.file_type().is_socket() && (m.dev(), m.ino()) == *ident {
                    let _ = std::fs::remove_file(&*path);
                }
            }
        }
    }
}

/// Binds a Unix listener at `path`. A socket file already there is removed only when nothing
/// answers on it (a stale leftover); a live socket is `AddrInUse`, and anything that is not a
/// socket (checked without following links) is never touched.
fn bind_unix(path: &Path) -> io::Result<ListenSocket> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{}: a server is listening there", path.display()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path)?;
            }
            Err(e) => return Err(e),
        },
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}: exists and is not a socket", path.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    let ident = std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()));
    Ok(ListenSocket::Unix {
        listener,
        path: path.to_path_buf(),
        ident,
    })
}

/// A connection budget that several listeners share ([`ListenerConfig::shared_budget`]).
/// Without one, each listener has its own budget of `max_connections`.
#[derive(Clone)]
pub struct ConnectionBudget(pub(super) Arc<Budget>);

impl ConnectionBudget {
    /// At most `max` connections (at least 1) over every listener that uses this budget.
    pub fn new(max: usize) -> ConnectionBudget {
        ConnectionBudget(Arc::new(Budget::new(max.max(1))))
    }

    /// Connections counted against it right now.
    pub fn active(&self) -> usize {
        self.0.active()
    }
}

/// A connection budget: how many connections are being set up or served. Checked on the
/// accept thread, so a refusal is immediate.
///
/// A per-address cap (issue 15, item 9) belongs here too: `try_acquire` already gets the peer.
pub(super) struct Budget {
    max: usize,
    active: AtomicUsize,
}

impl Budget {
    pub(super) fn new(max: usize) -> Budget {
        Budget {
            max,
            active: AtomicUsize::new(0),
        }
    }

    pub(super) fn try_acquire(self: &Arc<Self>, _peer: &Peer) -> Option<Permit> {
        self.active
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit(self.clone()))
    }

    pub(super) fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }
}

/// One connection's place in its listener's budget, given back on drop.
pub(super) struct Permit(Arc<Budget>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ferry-listener-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn budget_refuses_past_max_and_frees_on_drop() {
        let b = Arc::new(Budget::new(2));
        let p = Peer::Unix;
        let a = b.try_acquire(&p).unwrap();
        let c = b.try_acquire(&p).unwrap();
        assert!(b.try_acquire(&p).is_none());
        assert_eq!(b.active(), 2);
        drop(a);
        let _d = b.try_acquire(&p).unwrap();
        drop(c);
        assert_eq!(b.active(), 1);
    }

    #[test]
    fn unix_bind_replaces_a_stale_socket_only() {
        let dir = temp_dir("stale");
        let path = dir.join("s.sock");
        // A stale socket: bound, then its listener gone (the file stays).
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let l = ListenerConfig::unix(&path).bind().unwrap();
        assert_eq!(l.local_addr(), format!("unix:{}", path.display()));
        // A live one is not taken over.
        let err = ListenerConfig::unix(&path).bind().err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        // The listener removes its own socket file when it goes.
        drop(l);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unix_bind_never_removes_what_is_not_a_socket() {
        let dir = temp_dir("notsock");
        let file = dir.join("plain");
        std::fs::write(&file, b"keep me").unwrap();
        let err = ListenerConfig::unix(&file).bind().err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
        // A symlink to a stale socket is a link, not a socket: left alone too.
        let sock = dir.join("real.sock");
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        let link = dir.join("link.sock");
        std::os::unix::fs::symlink(&sock, &link).unwrap();
        assert!(ListenerConfig::unix(&link).bind().is_err());
        assert!(std::fs::symlink_metadata(&link).is_ok() && sock.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unix_listener_leaves_a_replaced_path_alone() {
        let dir = temp_dir("replaced");
        let path = dir.join("s.sock");
        let l = ListenerConfig::unix(&path).bind().unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"someone else's").unwrap();
        drop(l);
        assert_eq!(std::fs::read(&path).unwrap(), b"someone else's");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
