//! Listener configuration and binding: what a listener is (TCP address or Unix socket path),
//! how its connections are set up (TLS, preamble, timeouts, TCP_NODELAY) and how many it may
//! hold at once, and for a Unix socket how its file is made ([`UnixOptions`]: mode before the
//! first client, a lock file held for the listener's life, the folder created with a mode).
//! Plain data until [`ListenerConfig::bind`]; the accept loop and the connection set-up read it
//! from there.

use std::collections::HashMap;
use std::ffi::CString;
use std::fmt;
use std::fs::File;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
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

/// How a Unix socket listener makes its socket file (all off by default): libIPC's conventions,
/// which filestorage follows (filestorage.md 3.1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnixOptions {
    /// Mode of the socket file, in place before any client can connect.
    pub mode: Option<u32>,
    /// A lock file held (exclusive `flock`) for the listener's life.
    pub lock: Option<PathBuf>,
    /// Mode of the socket's folder when it has to be created.
    pub dir_mode: Option<u32>,
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
    pub(super) max_per_ip: Option<usize>,
    pub(super) shared_budget: Option<ConnectionBudget>,
    pub(super) close_linger: Duration,
    pub(super) label: Option<String>,
    pub(super) verbose: bool,
    pub(super) unix: UnixOptions,
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
            .field("max_per_ip", &self.max_per_ip)
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
            max_per_ip: None,
            shared_budget: None,
            close_linger: DEFAULT_CLOSE_LINGER,
            label: None,
            verbose: false,
            unix: UnixOptions::default(),
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

    /// Connections one peer IP address may hold on this listener at once (issue 15 item 9:
    /// a few peers cannot take the whole budget). One more from that address is refused like
    /// one over `max_connections`. Default: no cap of its own (the CLI sets a quarter of
    /// `--max-connections`); at least 1. Unix peers have no address and are not capped.
    pub fn max_per_ip(mut self, n: usize) -> Self {
        self.max_per_ip = Some(n.max(1));
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

    /// Unix listeners: the socket file has `mode` (e.g. `0o660`) before any client can connect.
    /// The socket is bound under a private name in the same folder, given the mode, then
    /// renamed into place without replacing anything (so the umask never decides it).
    pub fn unix_mode(mut self, mode: u32) -> Self {
        self.unix.mode = Some(mode & 0o7777);
        self
    }

    /// Unix listeners: take an exclusive non-blocking `flock` on `lock` (created if missing,
    /// never removed) before binding, and hold it for the listener's life. Held by someone
    /// else: bind fails (`AddrInUse`) and nothing is removed. Taken: a socket left at the path
    /// is a leftover of a dead instance and is replaced without probing it; anything at the
    /// path that is not a socket still fails the bind and is never removed.
    pub fn unix_lock(mut self, lock: impl Into<PathBuf>) -> Self {
        self.unix.lock = Some(lock.into());
        self
    }

    /// Unix listeners: a missing socket folder (and missing parents) is created with exactly
    /// `mode` (e.g. `0o770`, whatever the umask); an existing folder is not touched.
    pub fn unix_dir_mode(mut self, mode: u32) -> Self {
        self.unix.dir_mode = Some(mode & 0o7777);
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
                bind_unix(path, &self.unix)?
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
        /// The [`UnixOptions::lock`] file, its `flock` held while this lives.
        _lock: Option<File>,
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
                crate::transport::size_unix_buffers(&s);
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

/// Binds a Unix listener at `path` with `opts` (see [`UnixOptions`]). Without a lock, a socket
/// file already there is removed only when nothing answers on it (a stale leftover) and a live
/// socket is `AddrInUse`; with the lock taken, a socket there is stale by definition. Anything
/// that is not a socket (checked without following links) is never touched.
fn bind_unix(path: &Path, opts: &UnixOptions) -> io::Result<ListenSocket> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Some(mode) = opts.dir_mode {
        create_dir_with_mode(parent, mode)?;
    }
    let lock = match &opts.lock {
        Some(l) => Some(take_lock(l)?),
        None => None,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() && lock.is_some() => std::fs::remove_file(path)?,
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
    let listener = match opts.mode {
        None => UnixListener::bind(path)?,
        Some(mode) => bind_with_mode(path, parent, mode)?,
    };
    let ident = std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()));
    Ok(ListenSocket::Unix {
        listener,
        path: path.to_path_buf(),
        ident,
        _lock: lock,
    })
}

/// Binds under a private name in `parent`, gives the socket file `mode`, then renames it to
/// `path` without replacing anything: no client can reach the socket before it has its mode.
fn bind_with_mode(path: &Path, parent: &Path, mode: u32) -> io::Result<UnixListener> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let private = parent.join(format!(
        ".ferry-bind-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    // A leftover of an earlier process that had our pid.
    if std::fs::symlink_metadata(&private).is_ok_and(|m| m.file_type().is_socket()) {
        std::fs::remove_file(&private)?;
    }
    let listener = UnixListener::bind(&private)?;
    let placed = std::fs::set_permissions(&private, std::fs::Permissions::from_mode(mode))
        .and_then(|()| rename_noreplace(&private, path));
    match placed {
        Ok(()) => Ok(listener),
        Err(e) => {
            let _ = std::fs::remove_file(&private);
            if e.kind() == io::ErrorKind::AlreadyExists {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{}: taken while binding", path.display()),
                ));
            }
            Err(e)
        }
    }
}

/// `renameat2(RENAME_NOREPLACE)`, or `link` + `unlink` where the kernel or file system lacks it.
fn rename_noreplace(src: &Path, dst: &Path) -> io::Result<()> {
    let s = CString::new(src.as_os_str().as_bytes())?;
    let d = CString::new(dst.as_os_str().as_bytes())?;
    // SAFETY: both pointers are valid NUL-terminated strings that outlive the call; renameat2
    // reads them and touches no other memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            s.as_ptr(),
            libc::AT_FDCWD,
            d.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOSYS) | Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => {
            std::fs::hard_link(src, dst)?;
            std::fs::remove_file(src)
        }
        _ => Err(e),
    }
}

/// Creates `dir` (and missing parents) with exactly `mode`; an existing folder is left as it is.
fn create_dir_with_mode(dir: &Path, mode: u32) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_with_mode(parent, mode)?;
    }
    match std::fs::DirBuilder::new().mode(mode).create(dir) {
        // The umask may have taken bits away: set the mode we were asked for.
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Opens (creating, mode 0660) `path` and takes an exclusive non-blocking `flock` on it.
fn take_lock(path: &Path) -> io::Result<File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o660)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)?;
    // SAFETY: flock only acts on the descriptor, which `f` keeps open for the call.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{}: locked by another running instance", path.display()),
            ));
        }
        return Err(e);
    }
    Ok(f)
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

    /// As [`new`](Self::new), and at most `per_ip` (at least 1) from one peer address.
    pub fn with_max_per_ip(max: usize, per_ip: usize) -> ConnectionBudget {
        ConnectionBudget(Arc::new(Budget::with_max_per_ip(
            max.max(1),
            Some(per_ip.max(1)),
        )))
    }

    /// Connections counted against it right now.
    pub fn active(&self) -> usize {
        self.0.active()
    }
}

/// A connection budget: how many connections are being set up or served, in all and per peer
/// address. Checked on the accept thread, so a refusal is immediate.
pub(super) struct Budget {
    max: usize,
    active: AtomicUsize,
    /// Most connections from one IP address (`None`: no cap of its own).
    max_per_ip: Option<usize>,
    /// Connections held per address; an address leaves the map with its last connection, so
    /// the map is bounded by `max`.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl Budget {
    pub(super) fn new(max: usize) -> Budget {
        Budget::with_max_per_ip(max, None)
    }

    pub(super) fn with_max_per_ip(max: usize, max_per_ip: Option<usize>) -> Budget {
        Budget {
            max,
            active: AtomicUsize::new(0),
            max_per_ip,
            per_ip: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn try_acquire(self: &Arc<Self>, peer: &Peer) -> Option<Permit> {
        let ip = self.max_per_ip.and(peer.ip());
        // The address's count is taken first and given back if the total is full, under the
        // map's lock, so two connections of one address cannot both pass its cap.
        let mut per_ip = ip.map(|_| self.per_ip.lock().unwrap_or_else(PoisonError::into_inner));
        if let (Some(ip), Some(map), Some(cap)) = (ip, per_ip.as_mut(), self.max_per_ip) {
            if map.get(&ip).copied().unwrap_or(0) >= cap {
                return None;
            }
        }
        self.active
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        if let (Some(ip), Some(map)) = (ip, per_ip.as_mut()) {
            *map.entry(ip).or_insert(0) += 1;
        }
        Some(Permit(self.clone(), ip))
    }

    pub(super) fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Connections held by `ip` (0 when not capped per address).
    #[cfg(test)]
    pub(super) fn active_from(&self, ip: IpAddr) -> usize {
        let map = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(&ip).copied().unwrap_or(0)
    }
}

/// One connection's place in its listener's budget (and its address's), given back on drop.
pub(super) struct Permit(Arc<Budget>, Option<IpAddr>);

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(ip) = self.1 {
            let mut map = self.0.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
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
    fn per_ip_cap_refuses_one_address_and_admits_others() {
        let b = Arc::new(Budget::with_max_per_ip(4, Some(2)));
        let peer = |ip: &str| Peer::Tcp(SocketAddr::new(ip.parse().unwrap(), 1000));
        let (a, c) = (peer("10.0.0.1"), peer("10.0.0.2"));
        let a1 = b.try_acquire(&a).unwrap();
        let _a2 = b.try_acquire(&a).unwrap();
        assert!(b.try_acquire(&a).is_none(), "third from one address");
        assert_eq!(b.active_from("10.0.0.1".parse().unwrap()), 2);
        let _c1 = b.try_acquire(&c).unwrap();
        let _c2 = b.try_acquire(&c).unwrap();
        // The total is full: a new address is refused too, and its count is not kept.
        assert!(b.try_acquire(&peer("10.0.0.3")).is_none());
        assert_eq!(b.active_from("10.0.0.3".parse().unwrap()), 0);
        drop(a1);
        assert_eq!(b.active_from("10.0.0.1".parse().unwrap()), 1);
        let _a3 = b.try_acquire(&a).unwrap();
        assert_eq!(b.active(), 4);
        // Unix peers have no address: only the total counts for them.
        let u = Arc::new(Budget::with_max_per_ip(3, Some(1)));
        let _u1 = u.try_acquire(&Peer::Unix).unwrap();
        let _u2 = u.try_acquire(&Peer::Unix).unwrap();
        // An address leaves the map with its last connection.
        let one = u.try_acquire(&a).unwrap();
        drop(one);
        assert!(u.per_ip.lock().unwrap().is_empty());
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

    #[test]
    fn unix_mode_is_set_before_the_socket_appears_and_a_created_dir_gets_its_mode() {
        let dir = temp_dir("mode");
        let run = dir.join("a").join("run");
        let path = run.join("svc");
        let l = ListenerConfig::unix(&path)
            .unix_dir_mode(0o770)
            .unix_mode(0o660)
            .bind()
            .unwrap();
        let m = std::fs::symlink_metadata(&path).unwrap();
        assert!(m.file_type().is_socket());
        assert_eq!(m.mode() & 0o7777, 0o660);
        assert_eq!(std::fs::metadata(&run).unwrap().mode() & 0o7777, 0o770);
        // No private name is left behind.
        let names: Vec<_> = std::fs::read_dir(&run)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["svc"]);
        drop(l);
        // An existing folder is not touched.
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
        let _l = ListenerConfig::unix(&path)
            .unix_dir_mode(0o770)
            .bind()
            .unwrap();
        assert_eq!(std::fs::metadata(&run).unwrap().mode() & 0o7777, 0o755);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unix_lock_held_refuses_a_second_listener_and_removes_nothing() {
        let dir = temp_dir("lock");
        let path = dir.join("svc");
        let lock = dir.join("svc.lock");
        let first = ListenerConfig::unix(&path).unix_lock(&lock).bind().unwrap();
        let ident = std::fs::symlink_metadata(&path).unwrap().ino();
        let err = ListenerConfig::unix(&path)
            .unix_lock(&lock)
            .bind()
            .err()
            .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        assert_eq!(std::fs::symlink_metadata(&path).unwrap().ino(), ident);
        // The first one still accepts.
        assert!(UnixStream::connect(&path).is_ok());
        drop(first);
        assert!(!path.exists(), "the socket goes with its listener");
        assert!(lock.exists(), "the lock file stays");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unix_lock_taken_replaces_a_stale_socket_but_never_a_file() {
        let dir = temp_dir("lockstale");
        let path = dir.join("svc");
        let lock = dir.join("svc.lock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let l = ListenerConfig::unix(&path)
            .unix_lock(&lock)
            .unix_mode(0o660)
            .bind()
            .unwrap();
        assert!(UnixStream::connect(&path).is_ok());
        drop(l);
        std::fs::write(&path, b"keep me").unwrap();
        let err = ListenerConfig::unix(&path)
            .unix_lock(&lock)
            .bind()
            .err()
            .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
