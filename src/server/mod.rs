//! The server core shared by every protocol: blocking listeners, a bounded worker pool, one
//! shutdown path.
//!
//! ```text
//!  listener ──accept──► active < max? ──yes──► job channel ──► worker thread ──► Service::serve
//!     │  (poll 100 ms,          │                  (workers are spawned on demand, so a job
//!     │   sees shutdown)        └─no──► Service::busy (busy reply or close, at once)
//!     └─ shutdown: stop accepting, wake idle connections, wait up to the grace period,
//!        cut what is left, join every thread.
//! ```
//!
//! A worker never outnumbers the live connections by less than zero: before a job is queued
//! the pool makes sure there is a thread for it, so an accepted connection is never parked
//! behind idle or stalled peers. Protocol logic is out of scope here; a [`Service`] gets the
//! accepted socket and owns it until the connection ends.

mod signals;

pub use signals::{install_signal_handlers, take_rescan_request};

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

/// Stack size of worker threads: connection handlers keep their buffers on the heap.
const WORKER_STACK: usize = 512 * 1024;
/// How often the accept loop looks at the shutdown flag.
const ACCEPT_POLL: Duration = Duration::from_millis(100);

/// A socket handed to a service.
pub enum Accepted {
    Tcp(TcpStream, SocketAddr),
    Unix(UnixStream),
}

impl Accepted {
    pub fn peer(&self) -> String {
        match self {
            Accepted::Tcp(_, a) => a.to_string(),
            Accepted::Unix(_) => "unix".into(),
        }
    }
}

/// What a protocol plugs into the server core.
pub trait Service: Send + Sync + 'static {
    /// Protocol name for `listening <proto> <addr>` and logs.
    fn name(&self) -> &'static str;
    /// Runs one connection to its end on a worker thread. Errors end this connection only.
    fn serve(&self, conn: Accepted, ctx: &ConnCtx);
    /// The pool is full: answer "busy" in the protocol's way, without blocking, or just close.
    fn busy(&self, conn: Accepted) {
        drop(conn);
    }
}

/// The shared shutdown flag. Cloning shares it.
#[derive(Clone, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn trigger(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_triggered(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What a connection handler may ask of the server core.
pub struct ConnCtx {
    shutdown: Shutdown,
    slot: Arc<ConnSlot>,
}

impl ConnCtx {
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_triggered()
    }
    /// Marks the connection idle (waiting for a next request) or busy. Idle connections are woken
    /// (their read side shut down) when the server stops, so they end at once; busy ones may
    /// finish within the grace period. Call `set_idle(true)` *before* checking
    /// [`is_shutting_down`](Self::is_shutting_down) to close the race with the sweeper.
    pub fn set_idle(&self, idle: bool) {
        self.slot.idle.store(idle, Ordering::SeqCst);
    }
}

/// One live connection as the shutdown sweeper sees it.
struct ConnSlot {
    /// A duplicate of the connection's socket, owned here so shutting it down can never hit an
    /// unrelated socket that reused a closed descriptor number.
    fd: OwnedFd,
    idle: AtomicBool,
}

#[derive(Default)]
struct Registry {
    slots: Mutex<Vec<Arc<ConnSlot>>>,
}

impl Registry {
    fn add(&self, fd: OwnedFd) -> Arc<ConnSlot> {
        let slot = Arc::new(ConnSlot {
            fd,
            idle: AtomicBool::new(false),
        });
        self.slots.lock().unwrap().push(slot.clone());
        slot
    }
    fn remove(&self, slot: &Arc<ConnSlot>) {
        self.slots.lock().unwrap().retain(|s| !Arc::ptr_eq(s, slot));
    }
    fn len(&self) -> usize {
        self.slots.lock().unwrap().len()
    }
    /// Shuts down the read side of idle connections (or all, when `all`), which makes their
    /// blocked reads return end-of-file.
    fn wake(&self, all: bool) {
        let slots = self.slots.lock().unwrap();
        for s in slots.iter() {
            if all || s.idle.load(Ordering::SeqCst) {
                let how = if all { libc::SHUT_RDWR } else { libc::SHUT_RD };
                // SAFETY: shutdown(2) takes no pointers; the fd is owned by the slot, so open.
                unsafe { libc::shutdown(s.fd.as_raw_fd(), how) };
            }
        }
    }
}

/// A listener of any kind.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    pub fn bind_tcp(addr: &str) -> io::Result<Listener> {
        Ok(Listener::Tcp(TcpListener::bind(addr)?))
    }
    /// The address to print in the `listening` line.
    pub fn local_addr(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into()),
            Listener::Unix(l) => l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| format!("unix:{}", p.display())))
                .unwrap_or_else(|| "unix:?".into()),
        }
    }
    fn raw_fd(&self) -> i32 {
        match self {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix(l) => l.as_raw_fd(),
        }
    }
    fn accept(&self) -> io::Result<Accepted> {
        match self {
            Listener::Tcp(l) => {
                let (s, a) = l.accept()?;
                s.set_nonblocking(false)?;
                Ok(Accepted::Tcp(s, a))
            }
            Listener::Unix(l) => {
                let (s, _) = l.accept()?;
                s.set_nonblocking(false)?;
                Ok(Accepted::Unix(s))
            }
        }
    }
}

struct Job {
    conn: Accepted,
    svc: Arc<dyn Service>,
}

struct Pool {
    tx: Sender<Job>,
    rx: Receiver<Job>,
    active: AtomicUsize,
    threads: Mutex<Vec<JoinHandle<()>>>,
    max: usize,
    registry: Registry,
}

/// A running server: one accept thread per listener and the shared pool. Dropping it shuts the
/// server down (stop accepting, grace period, join).
pub struct ServerHandle {
    shutdown: Shutdown,
    grace: Duration,
    acceptors: Vec<JoinHandle<()>>,
    pool: Arc<Pool>,
    addrs: Vec<(String, String)>,
}

impl ServerHandle {
    /// `(protocol, address)` of every listener, in start order.
    pub fn addrs(&self) -> &[(String, String)] {
        &self.addrs
    }
    pub fn shutdown_flag(&self) -> Shutdown {
        self.shutdown.clone()
    }
    /// Connections being served right now.
    pub fn active(&self) -> usize {
        self.pool.active.load(Ordering::SeqCst)
    }
    /// Blocks until the shutdown flag is set (by a signal or another thread), then shuts down.
    pub fn wait(mut self) {
        while !self.shutdown.is_triggered() {
            thread::sleep(Duration::from_millis(100));
        }
        self.stop();
    }
    /// Stop accepting, let running connections finish for up to the grace period, cut the rest,
    /// join every thread.
    pub fn stop(&mut self) {
        self.shutdown.trigger();
        for a in self.acceptors.drain(..) {
            let _ = a.join();
        }
        let deadline = Instant::now() + self.grace;
        while self.pool.registry.len() > 0 && Instant::now() < deadline {
            self.pool.registry.wake(false);
            thread::sleep(Duration::from_millis(20));
        }
        self.pool.registry.wake(true);
        // Workers exit when the job channel is empty and the shutdown flag is set.
        let threads: Vec<_> = self.pool.threads.lock().unwrap().drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if !self.acceptors.is_empty() || !self.pool.threads.lock().unwrap().is_empty() {
            self.stop();
        }
    }
}

/// Builds servers: add listeners with their services, then [`start`](Self::start).
pub struct ServerBuilder {
    max_connections: usize,
    grace: Duration,
    shutdown: Shutdown,
    listeners: Vec<(Listener, Arc<dyn Service>)>,
}

impl ServerBuilder {
    pub fn new(max_connections: usize, grace: Duration, shutdown: Shutdown) -> Self {
        ServerBuilder {
            max_connections: max_connections.max(1),
            grace,
            shutdown,
            listeners: Vec::new(),
        }
    }
    pub fn listener(mut self, l: Listener, svc: Arc<dyn Service>) -> Self {
        self.listeners.push((l, svc));
        self
    }
    /// Starts accepting. Prints nothing; the caller prints `listening` lines from
    /// [`ServerHandle::addrs`] so it controls the output stream.
    pub fn start(self) -> io::Result<ServerHandle> {
        let (tx, rx) = crossbeam_channel::bounded(self.max_connections);
        let pool = Arc::new(Pool {
            tx,
            rx,
            active: AtomicUsize::new(0),
            threads: Mutex::new(Vec::new()),
            max: self.max_connections,
            registry: Registry::default(),
        });
        let mut acceptors = Vec::new();
        let mut addrs = Vec::new();
        for (l, svc) in self.listeners {
            addrs.push((svc.name().to_string(), l.local_addr()));
            let pool = pool.clone();
            let shutdown = self.shutdown.clone();
            let svc2 = svc.clone();
            acceptors.push(
                thread::Builder::new()
                    .name(format!("accept-{}", svc.name()))
                    .spawn(move || accept_loop(l, svc2, pool, shutdown))?,
            );
        }
        Ok(ServerHandle {
            shutdown: self.shutdown,
            grace: self.grace,
            acceptors,
            pool,
            addrs,
        })
    }
}

fn accept_loop(l: Listener, svc: Arc<dyn Service>, pool: Arc<Pool>, shutdown: Shutdown) {
    let fd = l.raw_fd();
    while !shutdown.is_triggered() {
        if !crate::transport::wait_readable(fd, ACCEPT_POLL) {
            continue;
        }
        let conn = match l.accept() {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off briefly rather than spin.
                if !matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) {
                    eprintln!("{}: accept: {e}", svc.name());
                    thread::sleep(Duration::from_millis(50));
                }
                continue;
            }
        };
        dispatch(&pool, &svc, conn, &shutdown);
    }
}

fn dispatch(pool: &Arc<Pool>, svc: &Arc<dyn Service>, conn: Accepted, shutdown: &Shutdown) {
    let active = pool.active.fetch_add(1, Ordering::SeqCst) + 1;
    if active > pool.max {
        pool.active.fetch_sub(1, Ordering::SeqCst);
        svc.busy(conn);
        return;
    }
    // Make sure a thread exists for every active connection before queueing.
    {
        let mut threads = pool.threads.lock().unwrap();
        if threads.len() < active {
            let p = pool.clone();
            let sd = shutdown.clone();
            match thread::Builder::new()
                .name("worker".into())
                .stack_size(WORKER_STACK)
                .spawn(move || worker_loop(p, sd))
            {
                Ok(h) => threads.push(h),
                Err(e) => {
                    drop(threads);
                    eprintln!("{}: cannot start a worker: {e}", svc.name());
                    pool.active.fetch_sub(1, Ordering::SeqCst);
                    svc.busy(conn);
                    return;
                }
            }
        }
    }
    let job = Job {
        conn,
        svc: svc.clone(),
    };
    // The channel holds max_connections jobs and active <= max, so this never blocks.
    if pool.tx.send(job).is_err() {
        pool.active.fetch_sub(1, Ordering::SeqCst);
    }
}

fn worker_loop(pool: Arc<Pool>, shutdown: Shutdown) {
    loop {
        let job = match pool.rx.recv_timeout(Duration::from_millis(100)) {
            Ok(j) => j,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if shutdown.is_triggered() {
                    return;
                }
                continue;
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        };
        let dup = match &job.conn {
            Accepted::Tcp(s, _) => s.as_fd().try_clone_to_owned(),
            Accepted::Unix(s) => s.as_fd().try_clone_to_owned(),
        };
        let Ok(dup) = dup else {
            pool.active.fetch_sub(1, Ordering::SeqCst);
            continue;
        };
        let slot = pool.registry.add(dup);
        let ctx = ConnCtx {
            shutdown: shutdown.clone(),
            slot: slot.clone(),
        };
        let svc = job.svc;
        let name = svc.name();
        let guard = SlotGuard {
            pool: &pool,
            slot: &slot,
        };
        let conn = job.conn;
        if catch_unwind(AssertUnwindSafe(|| svc.serve(conn, &ctx))).is_err() {
            eprintln!("{name}: a connection handler panicked; the server carries on");
        }
        drop(guard);
        pool.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Removes a connection's slot when its handler ends, panicking or not.
struct SlotGuard<'a> {
    pool: &'a Pool,
    slot: &'a Arc<ConnSlot>,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.pool.registry.remove(self.slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Echoes one line-less chunk back, then waits for EOF; counts busy refusals.
    struct Echo {
        busy: AtomicUsize,
    }

    impl Service for Echo {
        fn name(&self) -> &'static str {
            "echo"
        }
        fn serve(&self, conn: Accepted, ctx: &ConnCtx) {
            let mut buf = [0u8; 64];
            match conn {
                Accepted::Tcp(mut s, _) => {
                    ctx.set_idle(true);
                    if let Ok(n) = s.read(&mut buf) {
                        ctx.set_idle(false);
                        let _ = s.write_all(&buf[..n]);
                        ctx.set_idle(true);
                        let _ = s.read(&mut buf);
                    }
                }
                Accepted::Unix(mut s) => {
                    if let Ok(n) = s.read(&mut buf) {
                        let _ = s.write_all(&buf[..n]);
                    }
                }
            }
        }
        fn busy(&self, conn: Accepted) {
            self.busy.fetch_add(1, Ordering::SeqCst);
            if let Accepted::Tcp(mut s, _) = conn {
                let _ = s.write_all(b"busy");
            }
        }
    }

    fn start(max: usize) -> (ServerHandle, Arc<Echo>, String) {
        let echo = Arc::new(Echo {
            busy: AtomicUsize::new(0),
        });
        let l = Listener::bind_tcp("127.0.0.1:0").unwrap();
        let h = ServerBuilder::new(max, Duration::from_secs(2), Shutdown::new())
            .listener(l, echo.clone())
            .start()
            .unwrap();
        let addr = h.addrs()[0].1.clone();
        (h, echo, addr)
    }

    fn echo_once(addr: &str, msg: &[u8]) -> (std::net::TcpStream, Vec<u8>) {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(msg).unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap();
        (s, buf[..n].to_vec())
    }

    #[test]
    fn serves_then_refuses_beyond_max_connections_at_once() {
        let (h, echo, addr) = start(2);
        assert_eq!(h.addrs()[0].0, "echo");
        let (a, r) = echo_once(&addr, b"one");
        assert_eq!(r, b"one");
        let (b, r) = echo_once(&addr, b"two");
        assert_eq!(r, b"two");
        // Both workers are held by idle peers: the third connection is refused at once.
        let (_c, r) = echo_once(&addr, b"three");
        assert_eq!(r, b"busy");
        assert_eq!(echo.busy.load(Ordering::SeqCst), 1);
        drop(a);
        drop(b);
        let deadline = Instant::now() + Duration::from_secs(5);
        while h.active() > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        let (_d, r) = echo_once(&addr, b"four");
        assert_eq!(r, b"four", "a freed slot serves again");
    }

    #[test]
    fn stop_wakes_idle_connections_and_joins_every_thread() {
        let (mut h, _echo, addr) = start(8);
        let (mut idle, r) = echo_once(&addr, b"x");
        assert_eq!(r, b"x");
        let t0 = Instant::now();
        h.stop();
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "idle peers are woken, not waited for"
        );
        // The server side closed: the idle peer reads end-of-file.
        let mut buf = [0u8; 8];
        assert_eq!(idle.read(&mut buf).unwrap_or(0), 0);
        // The listener is gone with its accept thread.
        assert!(std::net::TcpStream::connect(&addr).is_err());
    }

    #[test]
    fn unix_listener_serves() {
        let dir = std::env::temp_dir().join(format!("ferry-server-unix-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        let echo = Arc::new(Echo {
            busy: AtomicUsize::new(0),
        });
        let l = Listener::Unix(UnixListener::bind(&path).unwrap());
        let h = ServerBuilder::new(4, Duration::from_secs(1), Shutdown::new())
            .listener(l, echo)
            .start()
            .unwrap();
        assert!(h.addrs()[0].1.starts_with("unix:"));
        let mut s = UnixStream::connect(&path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"hi").unwrap();
        let mut buf = [0u8; 8];
        let n = s.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hi");
        drop(h);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
