//! `ferry sync SOURCE DIR`: make the regular files directly in DIR hold exactly what a source
//! lists, moving only what differs, as a cron job would run it again and again.
//!
//! ```text
//!  lock DIR/.ferry/sync.lock ──busy──> exit at once
//!     │
//!     ├── list the source ───────────┐ (in parallel)
//!     └── open DIR's catalog ────────┤ (hashes only files whose stamp the index lacks)
//!                                    v
//!                          plan (pure, plan.rs): unchanged / fetch / reuse / delete
//!                                    │
//!   1 fetch   each missing content once, through the protocol's client, into
//!             DIR/.ferry/sync/in/ (verified there; batches retried, workers in parallel)
//!   2 hold    each local file whose content is wanted elsewhere: renamed (its name is
//!             released) or hard-linked into DIR/.ferry/sync/held/, before anything is replaced
//!   3 place   rename(2) over DIR/<name> (a link first for every extra name of one content)
//!   4 delete  with --delete: names the source no longer lists (regular files only), kept in
//!             DIR/.ferry/attic/ until the end of the next run (see [`attic`])
//!   5 record  the new files in the catalog's index with the hashes already known
//! ```
//!
//! Nothing is visible in DIR before it is verified: fetched bytes are checked by the client
//! (SHA-256 for TEJ, xxHash64 for JTP) while still in the hidden `.ferry/` folder, and a file
//! appears by one `rename(2)` that replaces the old version atomically. Content is compared by
//! the index's hashes, so an unchanged folder costs one `stat` per file and no read. Renames on
//! the source become local renames (or links) by content id: no transfer.
//!
//! A run interrupted anywhere leaves every name in DIR holding a complete file, old or new; the
//! next run clears `.ferry/sync/` and continues. TEJ and JTP cannot resume a file: an interrupted
//! file is fetched again whole (see `source.rs`).
//!
//! Out of scope: modes, owners and times (the protocols carry none; files get the time they
//! arrive), sub-folders (the catalog is flat), and the command line's output.

mod attic;
mod lock;
pub mod plan;
mod source;

pub use lock::{LockError, SyncLock};
pub use plan::{ContentId, Plan};
pub use source::{Connect, Source};

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs;
use std::hash::Hasher;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::catalog::{CatalogHandle, CatalogOptions, FileStamp};
use crate::dir::Dir;
use crate::driver::progress::Progress;
use attic::Attic;
use plan::{Fetch, LocalFile};
use source::{Attempt, Remote, Staged};

/// The sync's working folder inside the catalog's state folder.
const WORK_DIR: &str = "sync";

/// What to sync, and how.
#[derive(Clone, Debug)]
pub struct SyncOptions {
    pub source: Source,
    pub dir: PathBuf,
    pub connect: Connect,
    /// Remove local files the source does not list.
    pub delete: bool,
    /// Decide and report, change nothing.
    pub dry_run: bool,
    /// Further attempts of a batch that failed (network, refusal), with a growing pause.
    pub retries: u32,
    /// fsync every placed file and DIR before reporting.
    pub fsync: bool,
}

/// Why a run could not be done at all (a partial run is a [`Report`] with failures).
#[derive(Debug)]
pub enum SyncError {
    /// Bad SOURCE or options.
    Usage(String),
    /// Another sync of this folder holds its lock.
    Busy { dir: PathBuf, pid: Option<u32> },
    /// The local folder cannot be read or written.
    Local(String),
    /// The source cannot be reached, or the connection broke.
    Network(String),
    /// The source broke its protocol or refused.
    Protocol(String),
}

impl std::fmt::Display for SyncError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncError::Usage(m)
            | SyncError::Local(m)
            | SyncError::Network(m)
            | SyncError::Protocol(m) => f.write_str(m),
            SyncError::Busy { dir, pid } => write!(
                f,
                "sync: {} is being synced by another run{}; this run does nothing",
                dir.display(),
                pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
            ),
        }
    }
}

impl std::error::Error for SyncError {}

/// One name that could not be brought in line, and why.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Failed {
    pub name: String,
    pub error: String,
}

/// One change, as `--dry-run` lists them (and `-v` logs them).
#[derive(Clone, Debug, serde::Serialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum Action {
    Fetch { name: String, size: u64 },
    Move { from: String, name: String },
    Link { from: String, name: String },
    Delete { name: String },
}

/// How a run ended.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Report {
    /// Names written from fetched content.
    pub fetched: usize,
    /// Names placed by moving a local file (a rename on the source).
    pub moved: usize,
    /// Names placed by hard-linking a local file that stays.
    pub linked: usize,
    pub deleted: usize,
    pub unchanged: usize,
    /// Names not brought in line (see `failures`).
    pub failed: usize,
    /// Payload bytes fetched.
    pub bytes: u64,
    pub seconds: f64,
    pub dry_run: bool,
    /// The run stopped early (Ctrl-C); what was placed is complete.
    pub interrupted: bool,
    pub failures: Vec<Failed>,
    /// The changes (only with `--dry-run`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<Action>,
}

impl Report {
    /// DIR now matches the source.
    pub fn is_complete(&self) -> bool {
        self.failed == 0 && !self.interrupted
    }
}

/// Runs one sync. `stop` (Ctrl-C) ends fetching after the batches in flight; what arrived is
/// still placed. `progress` gets the fetch plan's totals, each content as it is verified, and
/// the bytes as they arrive (the client's own counters forwarded ten times a second).
pub fn run(
    opts: &SyncOptions,
    progress: &Progress,
    stop: &AtomicBool,
) -> Result<Report, SyncError> {
    let started = Instant::now();
    let remote = Remote::new(&opts.source, &opts.connect)?;
    let mut state = opts.dir.join(".ferry");
    // `DIR/.ferry` is opened once without following a link and must be private (ours,
    // writable by nobody else); the lock, the attic and the working folders are reached
    // through a path anchored at that descriptor, so a user who can write into DIR cannot
    // swap `.ferry` to redirect them (issue 15 item 3). Held for the whole run.
    let mut _state_dir = None;
    let lock = if opts.dry_run {
        // Reads only: the attic, if there is a private `.ferry` to read it from.
        if let Ok(d) = Dir::open(&opts.dir).and_then(|d| d.private_subdir(".ferry", false)) {
            if let Ok(a) = d.anchored_path() {
                state = a;
                _state_dir = Some(d);
            }
        }
        None
    } else {
        // A symlink to a folder is a folder here (mirrors often live behind one).
        if let Ok(m) = fs::metadata(&opts.dir) {
            if !m.is_dir() {
                return Err(SyncError::Local(format!(
                    "sync: {} is not a folder",
                    opts.dir.display()
                )));
            }
        }
        let d = Dir::create_all(&opts.dir)
            .and_then(|d| d.private_subdir(".ferry", true))
            .map_err(|e| SyncError::Local(format!("sync: {e}")))?;
        state = d
            .anchored_path()
            .map_err(|e| SyncError::Local(format!("sync: {e}")))?;
        _state_dir = Some(d);
        Some(SyncLock::acquire(&state).map_err(|e| match e {
            LockError::Held { pid } => SyncError::Busy {
                dir: opts.dir.clone(),
                pid,
            },
            LockError::Io(e) => SyncError::Local(format!(
                "sync: lock {}: {e}",
                opts.dir.join(".ferry").join(lock::LOCK_FILE).display()
            )),
        })?)
    };

    // The listing and the local scan take about as long as each other: do them at once.
    let verbose = opts.connect.verbose;
    let (listing, local) = std::thread::scope(|s| {
        let listing = s.spawn(|| {
            let t = Instant::now();
            let r = remote.list();
            (r, t.elapsed())
        });
        let t = Instant::now();
        let local = open_local(opts);
        let scanned = t.elapsed();
        let listing = listing.join().unwrap_or_else(|_| {
            (
                Err(SyncError::Local("sync: the listing thread panicked".into())),
                Duration::ZERO,
            )
        });
        (listing, (local, scanned))
    });
    let ((listing, listed_in), (local, scanned_in)) = (listing, local);
    let remote_files = listing?;
    let (catalog, local) = local?;
    let local_files: Vec<LocalFile> = local.iter().map(|l| l.file.clone()).collect();
    // Files earlier runs deleted, kept one run for content the source only moved.
    let mut attic = Attic::load(&state);
    let plan = plan::plan(&remote_files, &local_files, &attic.spares(), opts.delete);
    if verbose {
        let hashed = catalog.as_ref().map_or(0, |c| c.last_report().hashed);
        eprintln!(
            "sync: source lists {} files ({:.3} s); {} has {} ({:.3} s, {hashed} hashed); \
             plan: {} unchanged, {} to fetch ({:.1} MB), {} to place from local files, {} to \
             delete, {} refused",
            remote_files.len(),
            listed_in.as_secs_f64(),
            opts.dir.display(),
            local_files.len(),
            scanned_in.as_secs_f64(),
            plan.unchanged,
            plan.fetch.len(),
            plan.fetch_bytes() as f64 / 1e6,
            plan.reuse.len(),
            plan.delete.len(),
            plan.rejected.len()
        );
    }
    let mut phase = Instant::now();
    let mut lap = |what: &str| {
        if verbose {
            eprintln!("sync: {what} in {:.3} s", phase.elapsed().as_secs_f64());
        }
        phase = Instant::now();
    };

    let mut report = Report {
        unchanged: plan.unchanged,
        dry_run: opts.dry_run,
        ..Report::default()
    };
    for (name, why) in &plan.rejected {
        report.failures.push(Failed {
            name: name.clone(),
            error: (*why).to_string(),
        });
    }
    if opts.dry_run {
        report.actions = actions(&plan);
        report.fetched = plan.fetch.iter().map(|f| f.names.len()).sum();
        report.moved = plan
            .reuse
            .iter()
            .filter(|r| r.take)
            .map(|r| r.names.len())
            .sum();
        report.linked = plan
            .reuse
            .iter()
            .filter(|r| !r.take)
            .map(|r| r.names.len())
            .sum();
        report.deleted = plan.delete.len();
        report.bytes = plan.fetch_bytes();
        report.failed = report.failures.len();
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    let Some(catalog) = catalog else {
        return Err(SyncError::Local("sync: no catalog".into()));
    };
    let work = Work::prepare(&state)?;
    let local_by_name: HashMap<&str, &Local> =
        local.iter().map(|l| (l.file.name.as_str(), l)).collect();

    // 1. Fetch.
    progress.add_total_items(plan.fetch.len() as u64);
    progress.add_total_bytes(plan.fetch_bytes());
    let fetched = fetch_all(
        &remote,
        remote.workers(&opts.connect),
        remote.batches(&plan.fetch),
        &work.incoming,
        opts.retries,
        progress,
        stop,
    );
    let mut ready: Vec<Ready> = Vec::new();
    // Names whose new content did not come: what they hold now stays under them.
    let mut not_ready: HashSet<&str> = HashSet::new();
    for f in &plan.fetch {
        match fetched.get(&f.id) {
            Some(Ok(s)) => ready.push(Ready {
                staged: s.clone(),
                names: f.names.clone(),
                how: How::Fetched { size: f.size },
            }),
            Some(Err(e)) => {
                fail_all(&mut report, &f.names, e);
                not_ready.extend(f.names.iter().map(String::as_str));
            }
            None => {
                fail_all(&mut report, &f.names, "not fetched (interrupted)");
                not_ready.extend(f.names.iter().map(String::as_str));
            }
        }
    }
    report.interrupted = stop.load(Ordering::SeqCst);
    lap("fetched");

    // 2. Hold every local donor before any name is replaced: a donor's own name may be about to
    //    receive other content.
    let spares: HashMap<String, LocalFile> = attic
        .spares()
        .into_iter()
        .map(|l| (l.name.clone(), l))
        .collect();
    // Local copies that stay where they are (linked from): recorded again at the end, each
    // only if it is still the file whose hashes the catalog had.
    let mut kept_donors: Vec<(PathBuf, FileStamp, u64, [u8; 32])> = Vec::new();
    for (i, r) in plan.reuse.iter().enumerate() {
        let held = work.held.join(i.to_string());
        // A donor whose own name was to receive content that did not come is linked, not
        // moved: its name keeps the old file rather than none.
        let take = r.take && (r.spare || !not_ready.contains(r.from.as_str()));
        let got = if r.spare {
            attic.take(&r.from, &held).and_then(|()| {
                spares
                    .get(&r.from)
                    .cloned()
                    .ok_or_else(|| io::Error::other("gone"))
            })
        } else {
            let donor = local_by_name.get(r.from.as_str()).copied();
            hold(&opts.dir, &r.from, &held, take, donor).map(|l| {
                if !take {
                    kept_donors.push((
                        opts.dir.join(&r.from),
                        l.stamp,
                        l.file.xxh64,
                        l.file.sha256,
                    ));
                }
                l.file.clone()
            })
        };
        match got {
            Ok(l) => ready.push(Ready {
                staged: Staged {
                    path: held,
                    sha256: Some(l.sha256),
                    xxh64: Some(l.xxh64),
                },
                names: r.names.clone(),
                how: if take { How::Moved } else { How::Linked },
            }),
            Err(e) => fail_all(
                &mut report,
                &r.names,
                &format!("local copy {}: {e}", r.from),
            ),
        }
    }

    // 3. Place.
    let mut placed: Vec<(PathBuf, FileStamp, u64, [u8; 32])> = Vec::new();
    for r in ready {
        let (sha256, xxh64) = match complete_hashes(&r.staged) {
            Ok(h) => h,
            Err(e) => {
                fail_all(&mut report, &r.names, &format!("reading it back: {e}"));
                continue;
            }
        };
        // The staged file's stamp: every name it goes to is this inode, and the hashes are
        // recorded only for a name that still holds it unchanged.
        let stamp = match fs::symlink_metadata(&r.staged.path) {
            Ok(m) => FileStamp::from_metadata(&m),
            Err(e) => {
                fail_all(&mut report, &r.names, &format!("reading it back: {e}"));
                continue;
            }
        };
        if let How::Fetched { size } = r.how {
            report.bytes += size;
        }
        for (k, name) in r.names.iter().enumerate() {
            let last = k + 1 == r.names.len();
            let dest = opts.dir.join(name);
            match place(&r.staged.path, &dest, &work.root, last, opts.fsync) {
                Ok(()) => {
                    match r.how {
                        How::Fetched { .. } => report.fetched += 1,
                        How::Moved => report.moved += 1,
                        How::Linked => report.linked += 1,
                    }
                    placed.push((dest, stamp, xxh64, sha256));
                }
                Err(e) => fail_all(
                    &mut report,
                    std::slice::from_ref(name),
                    &format!("placing: {e}"),
                ),
            }
        }
    }
    // A donor that was linked (it stays) has a new ctime: record it again too, if its hold
    // found it unchanged (a donor refused as changed gets no hashes).
    placed.extend(kept_donors);

    lap("held and placed");

    // 4. Delete: into the attic when the catalog's hashes still describe the file.
    for name in &plan.delete {
        let path = opts.dir.join(name);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => {
                match remove(&mut attic, &path, &m, local_by_name.get(name.as_str())) {
                    Ok(()) => report.deleted += 1,
                    Err(e) => fail_all(
                        &mut report,
                        std::slice::from_ref(name),
                        &format!("delete: {e}"),
                    ),
                }
            }
            // Not a regular file (a symlink the catalog follows): never removed.
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => report.deleted += 1,
            Err(e) => fail_all(
                &mut report,
                std::slice::from_ref(name),
                &format!("delete: {e}"),
            ),
        }
    }
    if opts.fsync && (!placed.is_empty() || report.deleted > 0) {
        if let Err(e) = fsync_dir(&opts.dir) {
            return Err(SyncError::Local(format!(
                "sync: fsync {}: {e}",
                opts.dir.display()
            )));
        }
    }

    lap("deleted");

    // 5. Record: the next run then finds every file in the index and reads none of them.
    record(&catalog, &placed);
    if let Err(e) = attic.finish() {
        eprintln!(
            "sync: attic {}: {e}",
            state.join(attic::ATTIC_DIR).display()
        );
    }
    lap("recorded");
    work.clear();
    drop(lock);
    report.failed = report.failures.len();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Content ready to be placed under its names.
struct Ready {
    staged: Staged,
    names: Vec<String>,
    how: How,
}

/// Where ready content came from, for the report.
#[derive(Clone, Copy)]
enum How {
    Fetched { size: u64 },
    Moved,
    Linked,
}

/// A local file and the stamp its hashes were taken from.
struct Local {
    file: LocalFile,
    stamp: FileStamp,
}

type LocalScan = (Option<Arc<CatalogHandle>>, Vec<Local>);

/// The local side: DIR's catalog (None in a dry run of a folder that does not exist yet).
fn open_local(opts: &SyncOptions) -> Result<LocalScan, SyncError> {
    if opts.dry_run && !opts.dir.exists() {
        return Ok((None, Vec::new()));
    }
    // The catalog's own verbose log names every file it publishes: far too much for a mirror.
    let cat = CatalogHandle::open(&opts.dir, CatalogOptions { verbose: false })
        .map_err(|e| SyncError::Local(format!("sync: {e}")))?;
    let snap = cat.snapshot();
    // Only regular files directly in DIR are the mirror's: the catalog also serves symlinks
    // that resolve inside DIR, but sync neither moves, links from nor deletes one (a plan
    // built on one could never be carried out, and the dry run would say otherwise). A name
    // the source lists that is such a link here is replaced by a regular file.
    let local = snap
        .entries()
        .filter(|e| fs::symlink_metadata(&e.path).is_ok_and(|m| m.file_type().is_file()))
        .map(|e| Local {
            file: LocalFile {
                name: e.file_name().to_string(),
                size: e.size,
                sha256: e.sha256,
                xxh64: e.xxh64,
            },
            stamp: e.stamp,
        })
        .collect();
    Ok((Some(cat), local))
}

/// `DIR/.ferry/sync/` with its two folders, emptied.
struct Work {
    root: PathBuf,
    incoming: PathBuf,
    held: PathBuf,
}

impl Work {
    fn prepare(state: &Path) -> Result<Work, SyncError> {
        let root = state.join(WORK_DIR);
        let w = Work {
            incoming: root.join("in"),
            held: root.join("held"),
            root,
        };
        // Leftovers of an interrupted run hold nothing the next steps trust.
        w.clear();
        for d in [&w.incoming, &w.held] {
            fs::create_dir_all(d)
                .map_err(|e| SyncError::Local(format!("sync: {}: {e}", d.display())))?;
        }
        Ok(w)
    }

    fn clear(&self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn fail_all(report: &mut Report, names: &[String], why: &(impl std::fmt::Display + ?Sized)) {
    for n in names {
        report.failures.push(Failed {
            name: n.clone(),
            error: why.to_string(),
        });
    }
}

/// The dry run's list.
fn actions(plan: &Plan) -> Vec<Action> {
    let mut v = Vec::new();
    for f in &plan.fetch {
        for n in &f.names {
            v.push(Action::Fetch {
                name: n.clone(),
                size: f.size,
            });
        }
    }
    for r in &plan.reuse {
        let from = if r.spare {
            format!(".ferry/{}/{}", attic::ATTIC_DIR, r.from)
        } else {
            r.from.clone()
        };
        for n in &r.names {
            v.push(if r.take {
                Action::Move {
                    from: from.clone(),
                    name: n.clone(),
                }
            } else {
                Action::Link {
                    from: from.clone(),
                    name: n.clone(),
                }
            });
        }
    }
    for n in &plan.delete {
        v.push(Action::Delete { name: n.clone() });
    }
    v
}

/// One fetch attempt of a batch: what a source must do for [`fetch_all`] (a trait, so the
/// retry rules are tested without a network).
trait Fetcher: Sync {
    fn attempt(&self, items: &[&Fetch], into: &Path, stop: &AtomicBool) -> Attempt;

    /// File bytes the client received so far, over all attempts (for the progress line).
    fn bytes_received(&self) -> u64 {
        0
    }
}

impl Fetcher for Remote {
    fn attempt(&self, items: &[&Fetch], into: &Path, stop: &AtomicBool) -> Attempt {
        self.fetch(items, into, stop)
    }

    fn bytes_received(&self) -> u64 {
        self.progress().snapshot().bytes
    }
}

/// Largest read when a hash is read back from a fetched file.
const READ_BACK_BUF: usize = 1 << 20;

/// How often the client's byte counter is forwarded to the run's progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// Fetches every batch (`workers` at once, each tried `1 + retries` times); per id, where it
/// is or why not.
fn fetch_all<F: Fetcher>(
    remote: &F,
    workers: usize,
    batches: Vec<Vec<&Fetch>>,
    into: &Path,
    retries: u32,
    progress: &Progress,
    stop: &AtomicBool,
) -> HashMap<ContentId, Result<Staged, String>> {
    let workers = workers.clamp(1, batches.len().max(1));
    let queue: Mutex<VecDeque<Vec<&Fetch>>> = Mutex::new(batches.into());
    let results: Mutex<HashMap<ContentId, Result<Staged, String>>> = Mutex::new(HashMap::new());
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
    std::thread::scope(|s| {
        // Forwards the client's byte counter until every worker is done (the channel closes).
        s.spawn(|| {
            let mut forwarded = remote.bytes_received();
            loop {
                let finished = !matches!(
                    done_rx.recv_timeout(PROGRESS_EVERY),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout)
                );
                let now = remote.bytes_received();
                progress.add_bytes(now.saturating_sub(forwarded));
                forwarded = forwarded.max(now);
                if finished {
                    return;
                }
            }
        });
        let workers: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| loop {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Some(batch) = lock(&queue).pop_front() else {
                        return;
                    };
                    let done = fetch_batch(remote, batch, into, retries, progress, stop);
                    lock(&results).extend(done);
                })
            })
            .collect();
        for w in workers {
            let _ = w.join();
        }
        drop(done_tx);
    });
    results.into_inner().unwrap_or_else(|p| p.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// First pause between attempts; doubled each time, at most [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

fn fetch_batch<F: Fetcher>(
    remote: &F,
    mut batch: Vec<&Fetch>,
    into: &Path,
    retries: u32,
    progress: &Progress,
    stop: &AtomicBool,
) -> Vec<(ContentId, Result<Staged, String>)> {
    let mut out = Vec::new();
    let mut attempts_left = retries.saturating_add(1);
    let mut pause = FIRST_BACKOFF;
    let mut why = String::from("the source did not send it");
    while !batch.is_empty() && attempts_left > 0 {
        if stop.load(Ordering::SeqCst) {
            why = "interrupted".into();
            break;
        }
        let a = remote.attempt(&batch, into, stop);
        let got: HashMap<ContentId, Staged> = a.staged.into_iter().collect();
        let gone: HashSet<ContentId> = a.gone.into_iter().collect();
        let mut rest = Vec::new();
        let mut went_away = 0;
        for f in batch {
            if let Some(s) = got.get(&f.id) {
                progress.add_items(1);
                // The hash the client did not take (JTP: SHA-256; TEJ takes both on the way in)
                // is read back now, by this worker, while the file is in the page cache and
                // other workers keep the network busy.
                let full = complete_hashes(s).map(|(sha, x)| Staged {
                    path: s.path.clone(),
                    sha256: Some(sha),
                    xxh64: Some(x),
                });
                out.push((
                    f.id,
                    full.map_err(|e| format!("reading {} back: {e}", s.path.display())),
                ));
            } else if gone.contains(&f.id) {
                went_away += 1;
                out.push((
                    f.id,
                    Err("the source no longer has this content (changed since the listing)".into()),
                ));
            } else {
                rest.push(f);
            }
        }
        batch = rest;
        if batch.is_empty() {
            break;
        }
        // Ids of this batch that went away cost no attempt: the rest was not even sent, ask
        // again at once. (Ids the source says are gone but were not asked for do not count: a
        // source that keeps saying so would hold the run forever.)
        if a.error.is_none() && went_away > 0 {
            continue;
        }
        attempts_left -= 1;
        if let Some(e) = a.error {
            why = e.to_string();
            // A local failure (disk full, unwritable folder) does not heal by asking again.
            if matches!(e, SyncError::Local(_)) {
                break;
            }
        }
        if attempts_left > 0 && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(pause);
            pause = (pause * 2).min(MAX_BACKOFF);
        }
    }
    for f in batch {
        out.push((f.id, Err(why.clone())));
    }
    out
}

/// Moves (`take`) or links a local donor into the held folder, after checking that it is still
/// the regular file whose hashes the catalog knows.
fn hold<'a>(
    dir: &Path,
    from: &str,
    held: &Path,
    take: bool,
    l: Option<&'a Local>,
) -> io::Result<&'a Local> {
    let src = dir.join(from);
    let m = fs::symlink_metadata(&src)?;
    let Some(l) = l else {
        return Err(io::Error::other("not in the catalog"));
    };
    if !m.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let now = FileStamp::from_metadata(&m);
    if (now.dev, now.ino, now.size, now.mtime_ns)
        != (l.stamp.dev, l.stamp.ino, l.stamp.size, l.stamp.mtime_ns)
    {
        return Err(io::Error::other("changed during the run"));
    }
    if take {
        fs::rename(&src, held)?;
    } else {
        fs::hard_link(&src, held)?;
    }
    Ok(l)
}

/// Removes a file `--delete` wants gone, into the attic for one run, when it is still the file
/// the catalog hashed. A file changed since the scan (written meanwhile, or another file now
/// under the name) is left alone and reported: what `--delete` decided was about another file.
fn remove(attic: &mut Attic, path: &Path, m: &fs::Metadata, l: Option<&&Local>) -> io::Result<()> {
    let now = FileStamp::from_metadata(m);
    match l {
        Some(l)
            if (now.dev, now.ino, now.size, now.mtime_ns)
                == (l.stamp.dev, l.stamp.ino, l.stamp.size, l.stamp.mtime_ns) =>
        {
            attic.keep(path, &l.file.sha256, l.file.xxh64)
        }
        _ => Err(io::Error::other(
            "changed since it was scanned: left in place (the next run decides again)",
        )),
    }
}

/// The (sha256, xxh64) of a staged file: what the client verified, plus the other hash read
/// back from the file (the page cache still holds it).
fn complete_hashes(s: &Staged) -> io::Result<([u8; 32], u64)> {
    if let (Some(sha), Some(x)) = (s.sha256, s.xxh64) {
        return Ok((sha, x));
    }
    let mut f = fs::File::open(&s.path)?;
    // Sized to the file: most mirrored files are small, and zeroing a 1 MiB buffer for each
    // of 10,000 of them would cost more than hashing them.
    let len = f.metadata()?.len();
    let mut buf = vec![0u8; len.clamp(1, READ_BACK_BUF as u64) as usize];
    let mut sha = s.sha256.is_none().then(Sha256::new);
    let mut xxh = s.xxh64.is_none().then(|| twox_hash::XxHash64::with_seed(0));
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if let Some(h) = sha.as_mut() {
            h.update(&buf[..n]);
        }
        if let Some(h) = xxh.as_mut() {
            h.write(&buf[..n]);
        }
    }
    Ok((
        s.sha256
            .unwrap_or_else(|| sha.map(|h| h.finalize().into()).unwrap_or_default()),
        s.xxh64.unwrap_or_else(|| xxh.map_or(0, |h| h.finish())),
    ))
}

/// Puts `staged` at `dest`, replacing what is there in one step. `last`: the staged file itself
/// moves; otherwise a hard link of it does, so the next name can use it too.
fn place(staged: &Path, dest: &Path, work: &Path, last: bool, durable: bool) -> io::Result<()> {
    if durable {
        fs::File::open(staged)?.sync_all()?;
    }
    if last {
        return fs::rename(staged, dest);
    }
    let tmp = work.join("link.tmp");
    let _ = fs::remove_file(&tmp);
    fs::hard_link(staged, &tmp)?;
    fs::rename(&tmp, dest)
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Tells the catalog about placed files with their known hashes (one journal record each, no
/// read of the file), so the next run's scan finds them in the index.
/// A file changed since (written in place, or another renamed over it) gets no hashes: the
/// next scan hashes it.
fn record(catalog: &CatalogHandle, placed: &[(PathBuf, FileStamp, u64, [u8; 32])]) {
    for (path, was, xxh64, sha256) in placed {
        match catalog.add_unchanged_file(path, was, *xxh64, *sha256) {
            Ok(_) | Err(crate::catalog::CatalogError::Changed { .. }) => {}
            Err(e) => eprintln!("sync: updating the index: {e}"),
        }
    }
}

#[cfg(test)]
mod tests;
