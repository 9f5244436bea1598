//! The live catalog: one thread that follows the served folder with inotify (or, where inotify
//! is missing, by rescanning it every few seconds) and publishes what changed within a second.
//!
//! What an event means (names starting with `.` are never looked at):
//!
//! ```text
//!   IN_CREATE  regular file, 1 link --> WRITING (someone is filling it: publish nothing)
//!              symlink / new hard link / other -----------------------------+
//!   IN_MODIFY ----------------------> WRITING; its entry (if any) is retired |
//!   IN_CLOSE_WRITE, IN_MOVED_TO ----> not WRITING --------------------------+--> CHECK now
//!   IN_ATTRIB (not WRITING) ------------------------------------------------+
//!   IN_DELETE, IN_MOVED_FROM -------> not WRITING --------------------------+
//!   Entry::open failed (drift) ---------------------------------------------+
//!
//!   CHECK: gone/excluded --> retire at once
//!          stamp as published --> nothing
//!          first look --> look again after SETTLE with the stamp seen (other names of the
//!                         same inode are checked now: their ctime moved with it)
//!          two looks agree --> hash (no lock held) --> publish; disagree --> look again
//!
//!   IN_Q_OVERFLOW, a read error ----> full rescan
//!   root deleted / moved / unmounted -> logged; watched again once the very folder is back
//!                                       at its path (then rescan): the catalog keeps serving
//!                                       the folder it opened at start
//!   --watch SECS (or no inotify) ----> full rescan every SECS
//! ```
//!
//! The settle time is what "stable" means: a file is published only after two looks
//! [`SETTLE`] apart see the same stamp (size, mtime, ctime, inode), and hashing then checks the
//! stamp again on the open descriptor before and after reading. A file created and still open
//! for writing stays out until it is closed (`IN_CLOSE_WRITE`) or moved in.
//!
//! Out of scope: what is published (`mod.rs` checks, hashes and publishes), SIGHUP (the
//! command line calls [`CatalogHandle::rescan`]), and subfolders (the catalog is flat).

use super::inotify::{self, Event, Inotify};
use super::{io_err, lock, CatalogError, CatalogHandle, CatalogOptions, Check, FileStamp};
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Time between the two looks that must agree before a new or changed file is published.
pub const SETTLE: Duration = Duration::from_millis(100);
/// Rescan interval when inotify cannot be used and no `--watch` interval was given.
pub const FALLBACK_POLL: Duration = Duration::from_secs(2);
/// How often a lost root is looked for again.
const REWATCH: Duration = Duration::from_secs(2);
/// Names tracked as being written, at most (beyond, new ones are not tracked).
const MAX_WRITING: usize = 1 << 20;
/// The events the root is watched for.
const MASK: u32 = inotify::IN_CLOSE_WRITE
    | inotify::IN_MOVED_TO
    | inotify::IN_MOVED_FROM
    | inotify::IN_DELETE
    | inotify::IN_CREATE
    | inotify::IN_ATTRIB
    | inotify::IN_MODIFY
    | inotify::IN_DELETE_SELF
    | inotify::IN_MOVE_SELF
    | libc::IN_ONLYDIR
    | libc::IN_EXCL_UNLINK;

/// How [`CatalogHandle::follow`] follows the folder; plain data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FollowOptions {
    /// Watch the folder with inotify (default `true`). If inotify cannot be set up, this is
    /// logged and the folder is rescanned every `poll` (or every 2 s) instead.
    pub inotify: bool,
    /// Also rescan the whole folder at this interval (default `None`): the polling fallback
    /// for file systems whose changes inotify does not see (network and FUSE file systems).
    pub poll: Option<Duration>,
}

impl Default for FollowOptions {
    fn default() -> Self {
        FollowOptions {
            inotify: true,
            poll: None,
        }
    }
}

/// Wakes the follower thread (a byte on a socket pair its `poll` waits on).
#[derive(Clone, Debug)]
pub(super) struct Wake(Arc<UnixStream>);

impl Wake {
    pub(super) fn wake(&self) {
        // A full socket buffer already holds a wake-up; a closed peer means nobody to wake.
        let _ = (&*self.0).write(&[1]);
    }
}

/// Shared between the guard and the thread.
#[derive(Debug)]
struct Control {
    stop: AtomicBool,
    /// Test hook: behave as if the kernel reported `IN_Q_OVERFLOW`.
    overflow: AtomicBool,
    /// The root is watched by inotify now (set by the thread).
    watching: AtomicBool,
    /// Times the thread looked for a lost root again.
    rewatch_tries: AtomicU64,
    /// Times the thread woke (each turn of its loop).
    turns: AtomicU64,
    wake: Wake,
}

/// Keeps the follower (or periodic rescan) thread alive; dropping it stops and joins the
/// thread promptly (a scan under way is finished first).
#[derive(Debug)]
pub struct WatcherGuard {
    control: Option<Arc<Control>>,
    thread: Option<JoinHandle<()>>,
    handle: Weak<CatalogHandle>,
    live: bool,
}

impl WatcherGuard {
    /// Whether a watcher thread is running (false only if starting it failed).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Whether the folder is followed by inotify (false: polling only).
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// Whether inotify watches the folder now: false while it is lost (deleted, moved away,
    /// unmounted) until it comes back, and for a polling-only follower.
    pub fn is_watching(&self) -> bool {
        self.control
            .as_ref()
            .is_some_and(|c| c.watching.load(Ordering::SeqCst))
    }

    /// Times the follower looked for a lost folder again (one every 2 s while it is lost).
    #[cfg(test)]
    pub(super) fn rewatch_tries(&self) -> u64 {
        self.control
            .as_ref()
            .map_or(0, |c| c.rewatch_tries.load(Ordering::Relaxed))
    }

    /// Times the follower woke so far.
    #[cfg(test)]
    pub(super) fn turns(&self) -> u64 {
        self.control
            .as_ref()
            .map_or(0, |c| c.turns.load(Ordering::Relaxed))
    }

    /// Makes the follower act as if the kernel's event queue overflowed (a full rescan).
    #[cfg(test)]
    pub(super) fn simulate_overflow(&self) {
        if let Some(c) = &self.control {
            c.overflow.store(true, Ordering::SeqCst);
            c.wake.wake();
        }
    }
}

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        if let Some(c) = self.control.take() {
            c.stop.store(true, Ordering::SeqCst);
            c.wake.wake();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(h) = self.handle.upgrade() {
            *lock(&h.shared.drift.wake) = None;
        }
    }
}

/// An inotify instance watching the root.
struct Watch {
    ino: Inotify,
    wd: i32,
}

impl Watch {
    fn start(root: &std::path::Path) -> io::Result<Watch> {
        let ino = Inotify::new()?;
        let wd = ino.add_watch(root, MASK)?;
        Ok(Watch { ino, wd })
    }
}

impl CatalogHandle {
    /// [`open`](Self::open) and [`follow`](Self::follow) in one step, with the inotify watch
    /// set up *before* the first scan: a file that arrives while the folder is scanned is
    /// either listed by the scan or announced by an event, never missed.
    pub fn open_following(
        root: &Path,
        opts: CatalogOptions,
        follow: FollowOptions,
    ) -> Result<(Arc<CatalogHandle>, WatcherGuard), CatalogError> {
        crate::dir::create_dir_all(root).map_err(io_err(root))?;
        let watch = follow.inotify.then(|| Watch::start(root));
        let handle = CatalogHandle::open(root, opts)?;
        // The watch went by path: it must be on the folder the catalog opened.
        let watch = watch.map(|w| {
            w.and_then(|w| {
                if handle.is_root_at(root) {
                    Ok(w)
                } else {
                    Err(io::Error::other(
                        "the folder was replaced while ferry started",
                    ))
                }
            })
        });
        let guard = handle.start_follower(watch, follow.poll);
        Ok((handle, guard))
    }

    /// Starts following the folder as `opts` says, until the returned guard is dropped. The
    /// thread holds only a weak reference, so it also ends once the handle is gone. (A file
    /// added between `open` and this call is seen by the next rescan only: prefer
    /// [`open_following`](Self::open_following).)
    pub fn follow(self: &Arc<Self>, opts: FollowOptions) -> WatcherGuard {
        let watch = opts.inotify.then(|| Watch::start(&self.root));
        self.start_follower(watch, opts.poll)
    }

    fn start_follower(
        self: &Arc<Self>,
        watch: Option<io::Result<Watch>>,
        poll: Option<Duration>,
    ) -> WatcherGuard {
        let mut guard = WatcherGuard {
            control: None,
            thread: None,
            handle: Arc::downgrade(self),
            live: false,
        };
        let pair = UnixStream::pair().and_then(|(rx, tx)| {
            rx.set_nonblocking(true)?;
            tx.set_nonblocking(true)?;
            Ok((rx, tx))
        });
        let (rx, tx) = match pair {
            Ok(p) => p,
            Err(e) => {
                eprintln!(
                    "catalog: cannot start following {}: {e}",
                    self.root.display()
                );
                return guard;
            }
        };
        let mut poll = poll;
        let watch = match watch {
            None => None,
            Some(Ok(w)) => Some(w),
            Some(Err(e)) => {
                let every = poll.unwrap_or(FALLBACK_POLL);
                eprintln!(
                    "catalog: cannot watch {} with inotify ({e}); rescanning it every {} s",
                    self.root.display(),
                    every.as_secs_f64()
                );
                poll = Some(every);
                None
            }
        };
        guard.live = watch.is_some();
        let control = Arc::new(Control {
            stop: AtomicBool::new(false),
            overflow: AtomicBool::new(false),
            watching: AtomicBool::new(watch.is_some()),
            rewatch_tries: AtomicU64::new(0),
            turns: AtomicU64::new(0),
            wake: Wake(Arc::new(tx)),
        });
        *lock(&self.shared.drift.wake) = Some(control.wake.clone());
        let follower = Follower {
            weak: Arc::downgrade(self),
            shared: Arc::clone(&self.shared),
            root: self.root.clone(),
            watch,
            rewatch_at: None,
            poll,
            next_poll: poll.map(|p| Instant::now() + p),
            rx,
            control: Arc::clone(&control),
            pending: HashMap::new(),
            writing: HashSet::new(),
            rescan: false,
            last_error: None,
            buf: vec![0u8; inotify::READ_BUFFER],
        };
        match std::thread::Builder::new()
            .name("ferry-catalog-follow".into())
            .spawn(move || follower.run())
        {
            Ok(t) => {
                guard.control = Some(control);
                guard.thread = Some(t);
            }
            Err(e) => {
                *lock(&self.shared.drift.wake) = None;
                eprintln!("catalog: cannot start the watcher thread: {e}");
            }
        }
        guard
    }

    /// Spawns a thread that calls rescan() every `interval` (and re-checks names whose entries
    /// failed to open) until the returned guard is dropped: the polling-only follower.
    pub fn spawn_watcher(self: &Arc<Self>, interval: Duration) -> WatcherGuard {
        self.follow(FollowOptions {
            inotify: false,
            poll: Some(interval),
        })
    }
}

/// A name waiting for its next look.
#[derive(Clone, Copy, Debug)]
struct Pending {
    due: Instant,
    seen: Option<FileStamp>,
}

struct Follower {
    weak: Weak<CatalogHandle>,
    /// The root's descriptor (events name files in it).
    shared: Arc<super::Shared>,
    root: PathBuf,
    watch: Option<Watch>,
    /// The root was lost: look for it again then.
    rewatch_at: Option<Instant>,
    poll: Option<Duration>,
    next_poll: Option<Instant>,
    rx: UnixStream,
    control: Arc<Control>,
    pending: HashMap<OsString, Pending>,
    /// Names created and not yet closed after writing.
    writing: HashSet<OsString>,
    rescan: bool,
    last_error: Option<String>,
    buf: Vec<u8>,
}

impl Follower {
    fn run(mut self) {
        loop {
            let deadline = self
                .pending
                .values()
                .map(|p| p.due)
                .min()
                .into_iter()
                .chain(self.next_poll)
                .chain(self.rewatch_at)
                .min();
            let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            // The inotify instance, while the root is watched, and the wake-up socket.
            let rx = self.rx.as_raw_fd();
            let waited = match &self.watch {
                Some(w) => inotify::wait_readable([w.ino.as_raw_fd(), rx], timeout).map(drop),
                None => inotify::wait_readable([rx], timeout).map(drop),
            };
            if let Err(e) = waited {
                // poll(2) itself failing is not expected; do not spin on it.
                self.log_error(format!("catalog: waiting for changes: {e}"));
                std::thread::sleep(Duration::from_millis(100));
            }
            if self.control.stop.load(Ordering::SeqCst) {
                return;
            }
            self.control.turns.fetch_add(1, Ordering::Relaxed);
            self.drain_wakes();
            if self.control.overflow.swap(false, Ordering::SeqCst) {
                self.writing.clear();
                self.rescan = true;
            }
            self.read_events();
            let Some(handle) = self.weak.upgrade() else {
                return;
            };
            let now = Instant::now();
            for name in handle.shared.drift.take() {
                self.pending.entry(name).or_insert(Pending {
                    due: now,
                    seen: None,
                });
            }
            if self.next_poll.is_some_and(|t| now >= t) {
                self.rescan = true;
                self.next_poll = self.poll.map(|p| now + p);
            }
            if self.rewatch_at.is_some_and(|t| now >= t) {
                self.try_rewatch(now);
            }
            if std::mem::take(&mut self.rescan) {
                // The scan looks at every name as it is now.
                self.pending.clear();
                match handle.rescan() {
                    Ok(r) => {
                        self.last_error = None;
                        if handle.opts.verbose && r.changed {
                            eprintln!(
                                "catalog: rescan: {} files, {} hashed, {} reused",
                                r.files, r.hashed, r.reused
                            );
                        }
                    }
                    Err(e) => self.log_error(e.to_string()),
                }
            }
            let now = Instant::now();
            let due: Vec<OsString> = self
                .pending
                .iter()
                .filter(|(_, p)| p.due <= now)
                .map(|(n, _)| n.clone())
                .collect();
            if due.is_empty() {
                continue;
            }
            let checks = due
                .into_iter()
                .filter_map(|name| {
                    let p = self.pending.remove(&name)?;
                    let retire_only = self.writing.contains(&name);
                    Some(Check {
                        name,
                        seen: p.seen,
                        retire_only,
                    })
                })
                .collect();
            let out = handle.check(checks);
            let now = Instant::now();
            for (name, seen) in out.later {
                self.pending.insert(
                    name,
                    Pending {
                        due: now + SETTLE,
                        seen,
                    },
                );
            }
            for name in out.now {
                self.pending.entry(name).or_insert(Pending {
                    due: now,
                    seen: None,
                });
            }
        }
    }

    fn drain_wakes(&mut self) {
        let mut b = [0u8; 64];
        while matches!(self.rx.read(&mut b), Ok(n) if n > 0) {}
    }

    fn read_events(&mut self) {
        loop {
            let Some(w) = &self.watch else { return };
            let n = match w.ino.read(&mut self.buf) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) => {
                    self.log_error(format!(
                        "catalog: reading inotify events for {}: {e}; rescanning",
                        self.root.display()
                    ));
                    self.lose_root("no longer watched", Instant::now());
                    self.rescan = true;
                    return;
                }
            };
            let buf = std::mem::take(&mut self.buf);
            let now = Instant::now();
            for ev in inotify::events(&buf[..n]) {
                self.on_event(ev, now);
            }
            self.buf = buf;
        }
    }

    fn on_event(&mut self, ev: Event<'_>, now: Instant) {
        let m = ev.mask;
        if m & inotify::IN_Q_OVERFLOW != 0 {
            eprintln!(
                "catalog: too many changes at once in {}; rescanning it",
                self.root.display()
            );
            // Closes may have been lost with the rest: forget who was writing, as the rescan
            // publishes what it finds.
            self.writing.clear();
            self.rescan = true;
            return;
        }
        if m & inotify::IN_DELETE_SELF != 0 {
            return self.lose_root("deleted", now);
        }
        if m & inotify::IN_MOVE_SELF != 0 {
            return self.lose_root("moved away", now);
        }
        if m & inotify::IN_UNMOUNT != 0 {
            return self.lose_root("unmounted", now);
        }
        if m & inotify::IN_IGNORED != 0 {
            if self.watch.as_ref().is_some_and(|w| w.wd == ev.wd) {
                self.lose_root("no longer watched", now);
            }
            return;
        }
        let Some(name) = ev.name else { return };
        if name.as_bytes().first() == Some(&b'.') {
            return;
        }
        let name = name.to_owned();
        let gone_or_done = inotify::IN_DELETE
            | inotify::IN_MOVED_FROM
            | inotify::IN_CLOSE_WRITE
            | inotify::IN_MOVED_TO;
        if m & gone_or_done != 0 {
            self.writing.remove(&name);
        } else if m & inotify::IN_MODIFY != 0 {
            // The first write retires the published version; later ones change nothing more.
            if self.writing.len() >= MAX_WRITING || !self.writing.insert(name.clone()) {
                return;
            }
        } else if m & inotify::IN_CREATE != 0 {
            let fresh = self
                .shared
                .root
                .stat_at(&name)
                .is_ok_and(|st| st.is_file() && st.nlink() == 1);
            if fresh && self.writing.len() < MAX_WRITING {
                // Created and (almost surely) still open for writing: wait for its close.
                self.writing.insert(name);
                return;
            }
        } else if m & inotify::IN_ATTRIB != 0 {
            if self.writing.contains(&name) {
                return;
            }
        } else {
            return;
        }
        // A new event resets what an earlier look saw.
        self.pending.insert(
            name,
            Pending {
                due: now,
                seen: None,
            },
        );
    }

    fn lose_root(&mut self, why: &str, now: Instant) {
        if self.watch.take().is_some() {
            self.control.watching.store(false, Ordering::SeqCst);
            eprintln!(
                "catalog: the served folder {} was {why}; its files stay listed until they \
                 fail to open; watching for it to come back",
                self.root.display()
            );
            self.rewatch_at = Some(now + REWATCH);
        }
    }

    fn try_rewatch(&mut self, now: Instant) {
        self.control.rewatch_tries.fetch_add(1, Ordering::Relaxed);
        // The catalog keeps serving the folder it opened at start (its descriptor); a new
        // folder under the same path is not that folder, so it is not watched in its place.
        let same = self
            .weak
            .upgrade()
            .is_some_and(|h| h.is_root_at(&self.root));
        if !same {
            if std::fs::symlink_metadata(&self.root).is_ok() {
                self.log_error(format!(
                    "catalog: {} is now another folder; ferry keeps serving the one it \
                     opened at start (restart it to serve the new one)",
                    self.root.display()
                ));
            }
            self.rewatch_at = Some(now + REWATCH);
            return;
        }
        match Watch::start(&self.root) {
            Ok(w) => {
                eprintln!("catalog: watching {} again", self.root.display());
                self.watch = Some(w);
                self.control.watching.store(true, Ordering::SeqCst);
                self.rewatch_at = None;
                self.writing.clear();
                self.rescan = true;
            }
            Err(_) => self.rewatch_at = Some(now + REWATCH),
        }
    }

    fn log_error(&mut self, msg: String) {
        if self.last_error.as_deref() != Some(msg.as_str()) {
            eprintln!("{msg}");
        }
        self.last_error = Some(msg);
    }
}
