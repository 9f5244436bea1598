//! The server core shared by every stream protocol: listeners that own their transport, one
//! worker pool, one shutdown path. A protocol plugs in as a [`Service`] and receives each
//! connection ready to use (TLS done, preamble checked, timeouts set) with its [`Peer`]; it
//! never sees a raw socket to set up.
//!
//! ```text
//!  ListenerConfig::tcp/unix ─bind─► Listener ─┐   one accept thread per listener, asleep in
//!    (TLS + ALPN, preamble, timeouts,         │   poll(2) on the listener and a wake fd
//!     TCP_NODELAY, max_connections)           ▼
//!                        accept ──► listener budget free? ──no──► busy: the service's busy
//!                                          │ yes                   bytes (plain, no preamble)
//!                                          ▼                       or a close, at once
//!                     pool: a parked worker, or a new one (never queued behind busy ones)
//!                                          ▼
//!    worker: timeouts ─► Service::admit ─► TLS handshake ─► preamble ─► Service::serve
//!            (set-up runs here, never on the accept thread; see `setup`)
//!                                          ▼
//!    connection ends ─► budget place freed ─► worker parks; beyond CORE_WORKERS it retires
//!                                             after RETIRE_AFTER (10 s) without a job
//!
//!  shutdown (Shutdown::trigger: ctrlc's thread, ServerHandle::stop, Drop):
//!    wake fds ─► accept threads stop, listeners close ─► idle connections woken (read side
//!    shut) ─► busy ones finish within the grace period ─► the rest cut ─► every thread joined
//! ```
//!
//! Nothing polls when nothing happens: accept threads block in poll(2), parked workers block
//! on the job channel (those beyond the core set with their retire timeout), and
//! [`ServerHandle::wait`] sleeps on the shutdown's condition variable.
//!
//! Budgets are per listener: each refuses connections beyond its own `max_connections`, so one
//! protocol's idle peers cannot lock another's clients out (listeners that must share one limit
//! say so with a [`ConnectionBudget`]). The worker pool is shared and grows to the sum of the
//! budgets at most.
//!
//! Out of scope: protocol logic (the services in `driver`), UDP (CJP2P runs its own loop), and
//! the transports themselves (`transport`).

mod listener;
mod pool;
mod setup;
mod shutdown;
mod signals;

pub use listener::{
    ConnectionBudget, Listener, ListenerConfig, ListenerKind, Preamble, UnixOptions,
    DEFAULT_CLOSE_LINGER, DEFAULT_IO_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
};
pub use pool::{CORE_WORKERS, RETIRE_AFTER};
pub use setup::{PreambleError, SetupError};
pub use shutdown::{Shutdown, WakeFd};
pub use signals::{install_signal_handlers, take_rescan_request};

pub use crate::transport::Peer;

use std::io::{self, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use listener::{Budget, ListenSocket, RawConn};
use pool::{ConnSlot, Job, Pool};

use crate::transport::Stream;

/// How often the shutdown sweeper wakes connections that went idle during the grace period.
const SWEEP_EVERY: Duration = Duration::from_millis(50);

/// What a protocol plugs into the server core.
pub trait Service: Send + Sync + 'static {
    /// Protocol name for `listening <proto> <addr>` and logs.
    fn name(&self) -> &'static str;

    /// Runs one connection to its end on a worker thread. The stream is ready: TLS handshake
    /// done, preamble checked, read and write timeouts set to the listener's io timeout. Errors
    /// end this connection only; a panic here is caught and logged.
    fn serve(&self, stream: Stream, peer: &Peer, ctx: &ConnCtx);

    /// Called on the worker before any byte is read or written (so before a TLS handshake):
    /// rate limits and per-peer refusals go here. Default: admit.
    fn admit(&self, _peer: &Peer) -> Admission {
        Admission::Admit
    }

    /// Bytes sent at once, without blocking, to a connection refused because its listener is at
    /// `max_connections`, when the listener is plain (no TLS, no preamble). A TLS or preamble
    /// listener closes such a connection before its handshake without a byte. Default: none.
    fn busy_reply(&self) -> Option<Vec<u8>> {
        None
    }
}

/// The answer of [`Service::admit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Set the connection up and serve it.
    Admit,
    /// Close it now, before any handshake, without a byte.
    Close,
    /// Refuse it in the protocol's own words: finish set-up (TLS handshake, preamble), send
    /// these bytes, close in order. JTP's rate-limit refusal (jtp.md 3.7) is one.
    Reply(Vec<u8>),
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

/// A listener as the accept thread and the workers share it.
pub(crate) struct ListenerShared {
    name: String,
    cfg: ListenerConfig,
    service: Arc<dyn Service>,
    budget: Arc<Budget>,
}

impl ListenerShared {
    /// Over budget: the busy bytes on a plain listener (non-blocking, at once), then close.
    fn refuse_busy(&self, conn: RawConn) {
        if self.cfg.tls.is_some() || self.cfg.preamble.is_some() {
            return;
        }
        if let Some(bytes) = self.service.busy_reply() {
            let _ = match &conn {
                RawConn::Tcp(t) => t
                    .set_nonblocking(true)
                    .and_then(|()| (&*t).write_all(&bytes))
                    .and_then(|()| t.shutdown(std::net::Shutdown::Write)),
                RawConn::Unix(u) => u
                    .set_nonblocking(true)
                    .and_then(|()| (&*u).write_all(&bytes))
                    .and_then(|()| u.shutdown(std::net::Shutdown::Write)),
            };
        }
    }
}

/// A running server: one accept thread per listener and the shared pool. Dropping it shuts the
/// server down (stop accepting, grace period, join).
pub struct ServerHandle {
    shutdown: Shutdown,
    wake: Arc<WakeFd>,
    grace: Duration,
    acceptors: Vec<JoinHandle<()>>,
    pool: Arc<Pool>,
    listeners: Vec<Arc<ListenerShared>>,
    addrs: Vec<(String, String)>,
    stopped: bool,
}

impl ServerHandle {
    /// `(protocol, address)` of every listener, in start order.
    pub fn addrs(&self) -> &[(String, String)] {
        &self.addrs
    }

    pub fn shutdown_flag(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Connections being set up or served right now, over all listeners.
    pub fn active(&self) -> usize {
        self.pool.live()
    }

    /// Connections held by the listener at `index` (start order), against its budget.
    pub fn listener_active(&self, index: usize) -> usize {
        self.listeners.get(index).map_or(0, |l| l.budget.active())
    }

    /// Live worker threads (busy and parked).
    pub fn workers(&self) -> usize {
        self.pool.workers()
    }

    /// Sleeps until the shutdown is triggered (by a signal or another thread), then shuts down.
    pub fn wait(mut self) {
        self.shutdown.wait();
        self.stop();
    }

    /// Stop accepting, wake idle connections, let busy ones finish for up to the grace period,
    /// cut the rest, join every thread.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.shutdown.trigger();
        for a in self.acceptors.drain(..) {
            let _ = a.join();
        }
        self.pool.close();
        self.pool.drain(Instant::now() + self.grace, SWEEP_EVERY);
        self.pool.registry.wake(true);
        self.pool.join();
        self.shutdown.unregister(&self.wake);
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Builds servers: add bound listeners with their services, then [`start`](Self::start).
pub struct ServerBuilder {
    grace: Duration,
    shutdown: Shutdown,
    retire_after: Duration,
    listeners: Vec<(Listener, Arc<dyn Service>)>,
}

impl ServerBuilder {
    /// `grace`: how long shutdown lets busy connections finish.
    pub fn new(grace: Duration, shutdown: Shutdown) -> Self {
        ServerBuilder {
            grace,
            shutdown,
            retire_after: RETIRE_AFTER,
            listeners: Vec::new(),
        }
    }

    /// How long a worker beyond the [`CORE_WORKERS`] waits for a job before it exits.
    /// Default [`RETIRE_AFTER`] (10 s).
    pub fn retire_after(mut self, d: Duration) -> Self {
        self.retire_after = d;
        self
    }

    pub fn listener(mut self, l: Listener, svc: Arc<dyn Service>) -> Self {
        self.listeners.push((l, svc));
        self
    }

    /// Starts accepting. Prints nothing; the caller prints `listening` lines from
    /// [`ServerHandle::addrs`] so it controls the output stream.
    pub fn start(self) -> io::Result<ServerHandle> {
        let wake = Arc::new(WakeFd::new()?);
        let capacity = self
            .listeners
            .iter()
            .map(|(l, _)| l.cfg.max_connections)
            .fold(0usize, usize::saturating_add);
        let pool = Pool::new(capacity, self.shutdown.clone(), self.retire_after);
        let mut handle = ServerHandle {
            shutdown: self.shutdown.clone(),
            wake: wake.clone(),
            grace: self.grace,
            acceptors: Vec::new(),
            pool: pool.clone(),
            listeners: Vec::new(),
            addrs: Vec::new(),
            stopped: false,
        };
        self.shutdown.register(wake.clone());
        for (l, service) in self.listeners {
            let local = l.local_addr();
            let Listener { socket, cfg, .. } = l;
            let shared = Arc::new(ListenerShared {
                name: cfg
                    .label
                    .clone()
                    .unwrap_or_else(|| service.name().to_string()),
                budget: match &cfg.shared_budget {
                    Some(b) => b.0.clone(),
                    None => Arc::new(Budget::with_max_per_ip(cfg.max_connections, cfg.max_per_ip)),
                },
                cfg,
                service,
            });
            handle.addrs.push((shared.name.clone(), local));
            handle.listeners.push(shared.clone());
            let (pool, wake, shutdown) = (pool.clone(), wake.clone(), self.shutdown.clone());
            let name = shared.name.clone();
            // On error the handle's Drop stops the acceptors already started.
            handle.acceptors.push(
                thread::Builder::new()
                    .name(format!("accept-{name}"))
                    .spawn(move || accept_loop(shared, socket, pool, wake, shutdown))?,
            );
        }
        Ok(handle)
    }
}

/// Accepts until shutdown, asleep in poll(2) between connections.
fn accept_loop(
    l: Arc<ListenerShared>,
    socket: ListenSocket,
    pool: Arc<Pool>,
    wake: Arc<WakeFd>,
    shutdown: Shutdown,
) {
    let mut fds = [
        libc::pollfd {
            fd: socket.raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: wake.raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        if shutdown.is_triggered() {
            return;
        }
        for f in &mut fds {
            f.revents = 0;
        }
        // SAFETY: `fds` is a live array of two pollfds for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                eprintln!("{}: poll: {e}", l.name);
                thread::sleep(Duration::from_millis(50));
            }
            continue;
        }
        if fds[1].revents != 0 || shutdown.is_triggered() {
            return;
        }
        if fds[0].revents == 0 {
            continue;
        }
        // Take every connection waiting in the backlog, then sleep again.
        while !shutdown.is_triggered() {
            let (conn, peer) = match socket.accept() {
                Ok(c) => c,
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock => break,
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => continue,
                    _ => {
                        // EMFILE and friends: the connection stays in the backlog; back off
                        // briefly rather than spin on it.
                        eprintln!("{}: accept: {e}", l.name);
                        thread::sleep(Duration::from_millis(50));
                        break;
                    }
                },
            };
            match l.budget.try_acquire(&peer) {
                Some(permit) => pool.dispatch(Job {
                    conn,
                    peer,
                    listener: l.clone(),
                    permit,
                }),
                None => l.refuse_busy(conn),
            }
        }
    }
}

#[cfg(test)]
mod tests;
