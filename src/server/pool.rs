//! The worker pool shared by every listener of a server, and the registry the shutdown sweeper
//! uses to wake idle connections.
//!
//! Invariant: an accepted connection never waits for a busy worker. Under one lock, `dispatch`
//! either hands the job to a worker that is parked with nothing to do (counted in `idle`) or
//! starts a new worker for it. A parked worker is counted once; a dispatch uncounts one; a
//! worker whose wait timed out takes a job left for it (`try_recv` under the lock) before it
//! may retire, so a job is never stranded in the channel.
//!
//! ```text
//!   dispatch ──idle > 0?──yes──► idle -= 1, channel ──► parked worker
//!                  └──no──► spawn worker(job)
//!   worker: job ──► run ──► park (idle += 1) ──job──► run ...
//!                              │ (only when more than CORE_WORKERS live)
//!                              └─ RETIRE_AFTER without a job ──► exit (idle -= 1)
//!   stop: channel closed ──► every parked worker exits; running ones finish, then exit
//! ```

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};

use super::listener::{Permit, RawConn};
use super::setup::set_up;
use super::{ConnCtx, ListenerShared, Shutdown};
use crate::transport::Peer;

/// Workers kept alive however long they idle: enough for a few connections without a thread
/// start, small enough that an idle server holds almost nothing.
pub const CORE_WORKERS: usize = 4;
/// A worker beyond [`CORE_WORKERS`] that waits this long without a job exits: long enough that
/// a steady stream of short connections reuses threads, short enough that a burst's threads
/// (their stacks and buffers) are gone soon after it.
pub const RETIRE_AFTER: Duration = Duration::from_secs(10);
/// Stack size of worker threads: connection handlers keep their buffers on the heap.
const WORKER_STACK: usize = 512 * 1024;

/// One accepted connection on its way to a worker.
pub(super) struct Job {
    pub(super) conn: RawConn,
    pub(super) peer: Peer,
    pub(super) listener: Arc<ListenerShared>,
    pub(super) permit: Permit,
}

#[derive(Default)]
struct State {
    /// Parked workers not yet promised a job.
    idle: usize,
    /// Live worker threads.
    workers: usize,
    /// Connections dispatched and not yet finished.
    live: usize,
    /// Worker handles by id; a retiring worker moves its own to `retired`.
    handles: HashMap<u64, JoinHandle<()>>,
    retired: Vec<JoinHandle<()>>,
    next_id: u64,
    /// Cleared by [`Pool::close`]: no more jobs.
    tx: Option<Sender<Job>>,
}

pub(super) struct Pool {
    state: Mutex<State>,
    /// Signalled when `live` drops to zero.
    drained: Condvar,
    rx: Receiver<Job>,
    shutdown: Shutdown,
    /// How long a worker beyond the core set waits for a job before it exits.
    retire_after: Duration,
    pub(super) registry: Registry,
}

impl Pool {
    /// `capacity`: the most jobs that can ever be in flight (the sum of the listeners' budgets).
    pub(super) fn new(capacity: usize, shutdown: Shutdown, retire_after: Duration) -> Arc<Pool> {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        Arc::new(Pool {
            state: Mutex::new(State {
                tx: Some(tx),
                ..State::default()
            }),
            drained: Condvar::new(),
            rx,
            shutdown,
            retire_after,
            registry: Registry::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic never happens under this lock; recover the data if one ever did.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connections dispatched and not yet finished.
    pub(super) fn live(&self) -> usize {
        self.lock().live
    }

    /// Live worker threads.
    pub(super) fn workers(&self) -> usize {
        self.lock().workers
    }

    /// Hands `job` to a parked worker, or starts one for it. Never blocks on other connections.
    pub(super) fn dispatch(self: &Arc<Self>, job: Job) {
        let mut st = self.lock();
        let Some(tx) = st.tx.clone() else {
            return; // closed: the connection is dropped
        };
        st.live += 1;
        if st.idle > 0 {
            st.idle -= 1;
            match tx.try_send(job) {
                Ok(()) => return,
                // Cannot happen (jobs in flight never exceed the budgets); start a worker.
                Err(TrySendError::Full(j) | TrySendError::Disconnected(j)) => {
                    st.idle += 1;
                    return self.spawn(st, j);
                }
            }
        }
        self.spawn(st, job);
    }

    fn spawn(self: &Arc<Self>, mut st: MutexGuard<'_, State>, job: Job) {
        // Reap workers that retired (their threads have ended; never wait here for one).
        let (done, running): (Vec<_>, Vec<_>) = st.retired.drain(..).partition(|h| h.is_finished());
        st.retired = running;
        for h in done {
            let _ = h.join();
        }
        let id = st.next_id;
        st.next_id += 1;
        let pool = self.clone();
        let name = job.listener.name.clone();
        // On failure the closure, and with it the job, is dropped: the connection closes and
        // its budget place is given back.
        let spawned = thread::Builder::new()
            .name("worker".into())
            .stack_size(WORKER_STACK)
            .spawn(move || pool.worker(id, Some(job)));
        match spawned {
            Ok(h) => {
                st.workers += 1;
                st.handles.insert(id, h);
            }
            Err(e) => {
                st.live -= 1;
                if st.live == 0 {
                    self.drained.notify_all();
                }
                drop(st);
                eprintln!("{name}: cannot start a worker: {e}");
            }
        }
    }

    fn worker(self: Arc<Self>, id: u64, first: Option<Job>) {
        let mut next = first;
        loop {
            if let Some(job) = next.take() {
                self.run(job);
                let mut st = self.lock();
                st.live -= 1;
                if st.live == 0 {
                    self.drained.notify_all();
                }
            }
            match self.park(id) {
                Some(job) => next = Some(job),
                None => return,
            }
        }
    }

    /// Waits for a job. `None`: exit (the pool closed, or this worker retired).
    fn park(&self, id: u64) -> Option<Job> {
        let mut st = self.lock();
        st.idle += 1;
        loop {
            let retiring = st.workers > CORE_WORKERS;
            drop(st);
            let r = if retiring {
                self.rx.recv_timeout(self.retire_after)
            } else {
                self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
            };
            st = self.lock();
            match r {
                // The dispatcher already uncounted us.
                Ok(job) => return Some(job),
                Err(RecvTimeoutError::Disconnected) => {
                    st.idle = st.idle.saturating_sub(1);
                    st.workers -= 1;
                    return None;
                }
                Err(RecvTimeoutError::Timeout) => {
                    // A job may have been promised to "some parked worker" just now: take it.
                    match self.rx.try_recv() {
                        Ok(job) => return Some(job),
                        Err(TryRecvError::Empty | TryRecvError::Disconnected) => {}
                    }
                    if st.workers > CORE_WORKERS {
                        st.idle -= 1;
                        st.workers -= 1;
                        if let Some(h) = st.handles.remove(&id) {
                            st.retired.push(h);
                        }
                        let back_to_core = st.workers == CORE_WORKERS;
                        // Reap retired workers: a thread's stack is only given back once it is
                        // joined. The last to retire waits for all the others (each has left
                        // its loop); otherwise only those already ended are taken.
                        let me = thread::current().id();
                        let (reap, keep): (Vec<_>, Vec<_>) = st.retired.drain(..).partition(|h| {
                            h.thread().id() != me && (back_to_core || h.is_finished())
                        });
                        st.retired = keep;
                        drop(st);
                        for h in reap {
                            let _ = h.join();
                        }
                        if back_to_core {
                            release_freed_memory();
                        }
                        return None;
                    }
                    // Still counted as parked; wait again, now without a timeout.
                }
            }
        }
    }

    /// Sets up and serves one connection; a panic anywhere in it ends only this connection.
    fn run(&self, job: Job) {
        let Job {
            conn,
            peer,
            listener,
            permit,
        } = job;
        let Ok(dup) = dup_socket(&conn) else {
            return;
        };
        let slot = self.registry.add(dup);
        let _guard = SlotGuard {
            registry: &self.registry,
            slot: &slot,
        };
        let ctx = ConnCtx {
            shutdown: self.shutdown.clone(),
            slot: slot.clone(),
        };
        // Registered after the flag was set: the sweeper may have missed us, so look.
        if ctx.is_shutting_down() {
            return;
        }
        let name = listener.name.clone();
        let r = catch_unwind(AssertUnwindSafe(|| {
            match set_up(conn, &peer, &listener.cfg, &*listener.service, &ctx) {
                Ok(Some(stream)) => {
                    ctx.set_idle(false);
                    listener.service.serve(stream, &peer, &ctx);
                }
                Ok(None) => {}
                Err(e) => {
                    if listener.cfg.verbose {
                        eprintln!("{name}: {peer}: {e}");
                    }
                }
            }
        }));
        if r.is_err() {
            eprintln!("{name}: a connection handler panicked; the server carries on");
        }
        drop(permit);
    }

    /// No more jobs: parked workers exit now, running ones when their connection ends.
    pub(super) fn close(&self) {
        self.lock().tx = None;
    }

    /// Waits until no connection is live or `deadline` passes, waking idle connections
    /// (see [`Registry::wake`]) every `every` meanwhile. True when none is live.
    pub(super) fn drain(&self, deadline: Instant, every: Duration) -> bool {
        let mut st = self.lock();
        loop {
            if st.live == 0 {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.registry.wake(false);
            st = self
                .drained
                .wait_timeout(st, left.min(every))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Joins every worker thread (after [`close`](Self::close) and the connection cut).
    pub(super) fn join(&self) {
        let handles: Vec<JoinHandle<()>> = {
            let mut st = self.lock();
            let mut v: Vec<_> = st.handles.drain().map(|(_, h)| h).collect();
            v.append(&mut st.retired);
            v
        };
        for h in handles {
            let _ = h.join();
        }
    }
}

/// A duplicate of the connection's socket for the sweeper.
fn dup_socket(conn: &RawConn) -> std::io::Result<OwnedFd> {
    use std::os::fd::BorrowedFd;
    // SAFETY: the fd belongs to `conn`, which is open for the duration of this call.
    let fd = unsafe { BorrowedFd::borrow_raw(conn.raw_fd()) };
    fd.try_clone_to_owned()
}

/// Gives memory freed by retired workers back to the system: glibc keeps freed heap in its
/// per-thread arenas otherwise, and an idle server would keep a burst's peak forever. (Their
/// stacks go back when they are joined, see `park`.)
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only returns free memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// One live connection as the shutdown sweeper sees it.
pub(super) struct ConnSlot {
    /// A duplicate of the connection's socket, owned here so shutting it down can never hit an
    /// unrelated socket that reused a closed descriptor number.
    fd: OwnedFd,
    pub(super) idle: AtomicBool,
}

#[derive(Default)]
pub(super) struct Registry {
    slots: Mutex<Vec<Arc<ConnSlot>>>,
}

impl Registry {
    fn add(&self, fd: OwnedFd) -> Arc<ConnSlot> {
        // Idle until set-up ends: a handshake or preamble in progress is cut at shutdown.
        let slot = Arc::new(ConnSlot {
            fd,
            idle: AtomicBool::new(true),
        });
        self.lock().push(slot.clone());
        slot
    }

    fn remove(&self, slot: &Arc<ConnSlot>) {
        self.lock().retain(|s| !Arc::ptr_eq(s, slot));
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Arc<ConnSlot>>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Shuts down the read side of idle connections (or both sides of all, when `all`), which
    /// makes their blocked reads return end-of-file.
    pub(super) fn wake(&self, all: bool) {
        for s in self.lock().iter() {
            if all || s.idle.load(Ordering::SeqCst) {
                let how = if all { libc::SHUT_RDWR } else { libc::SHUT_RD };
                // SAFETY: shutdown(2) takes no pointers; the fd is owned by the slot, so open.
                unsafe { libc::shutdown(s.fd.as_raw_fd(), how) };
            }
        }
    }
}

/// Removes a connection's slot when its handler ends, panicking or not.
struct SlotGuard<'a> {
    registry: &'a Registry,
    slot: &'a Arc<ConnSlot>,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.registry.remove(self.slot);
    }
}
