//! The filestorage store on disk (filestorage.md 7): `.ferry/filestorage/` of the served folder,
//! with everything QUERY, FETCH and quotas need kept in memory beside it.
//!
//! ```text
//! objects/<sha256>            content, 0444, shared by every record with that hash
//! records/<id>.json           the commit point of a stored file
//! by-owner/<uid>/<id>         empty markers, derived from records (rebuilt at start)
//! by-tag/<tag>/<id>
//! partial/<fid>/state.json    the batch: files, tags, chunk size, missing ranges, touched
//! partial/<fid>/journal       16-byte records, one per chunk made durable
//! partial/<fid>/<file>.part   sparse, positional writes only
//! lock                        held (flock) while a server or `rm` uses the store
//! ```
//!
//! A chunk's life, per connection (S20, group commit of what was already received):
//!
//! ```text
//!  TRANSFER ─► begin_write: held already? ─yes─► Ok (first copy kept)
//!                 │ claimed by another connection? ─yes─► follower: Ok once that claim settles
//!                 ▼ claim, hash if in order, pwrite into the part
//!  (more TRANSFERs already received, up to window)
//!                 ▼
//!  finish_writes: fdatasync each part once ─► journal records appended, fdatasync ─► held
//!     └─ a file's last chunk: complete (7.2): hash, compare, 0444 + link objects/<sha256>,
//!        record, markers, publication (a link), part removed, the published name registered
//!        with the catalog (after the unlink, which moved the inode's ctime), reservation
//!        becomes usage
//!     └─ the batch's last file: partial/<fid>/ removed
//! ```
//!
//! Locks: the partials map is never held while waiting for a partial's lock (a partial's lock
//! may take the map's, to remove itself); the retention sweep only tries a partial's lock. The
//! per-uid ledger lock is held only around one reservation or one update, so two
//! AUTHENTICATIONs racing for the last bytes of a quota are decided one after the other (S30).
//!
//! Here: opening batches (AUTHENTICATION), retention, QUERY and FETCH. Receiving chunks and
//! completing files is `transfer`'s; recovery at start `recover`'s; sockets and the wire
//! `server`'s and the machines'.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use super::disk::{self, FileHash};
use crate::catalog::CatalogHandle;
use crate::ingest::{ledger, IngestDir};
use crate::proto::filestorage::ids::{store_id, Uuid};
use crate::proto::filestorage::reason::{Code, Reason};
use crate::proto::filestorage::server::{FetchCall, QueryCall, WriteOutcome};
use crate::proto::filestorage::store::auth::{plan_authentication, AuthCall, AuthPlan, FileFate};
use crate::proto::filestorage::store::index::{fetch_range, Entry, Index, QueryPage, QuerySpec};
use crate::proto::filestorage::store::missing::MissingSet;
use crate::proto::filestorage::store::names::{MAX_TAGS, PUBLIC};
use crate::proto::filestorage::store::quota::{QuotaConfig, Reservation, UidLedger};
use crate::proto::filestorage::store::records::{PartialState, Record};
use crate::wire::hex;

/// Journal records after which the missing set is folded into `state.json` (spec 7.2).
pub const FOLD_EVERY: u64 = 4096;
/// Shortest time between two rebuilds of the catalog's public entries (each is O(catalog)).
const VIEW_REBUILD_EVERY: Duration = Duration::from_millis(250);

/// How a store behaves; plain data.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Per-uid limits (`--quota-file`; built-in defaults of spec 7.4 otherwise).
    pub quotas: QuotaConfig,
    /// Bytes kept free on the store's file system, counting what every unfinished upload of
    /// the process was promised ([`ledger`]): 64 MiB.
    pub disk_reserve: u64,
    /// A partial transfer untouched this long is deleted and its reservation freed: 24 h.
    pub retention: Duration,
    /// How often the retention sweep runs (it also runs at start): 10 min.
    pub sweep_every: Duration,
    /// Log completions, publications and sweeps on stderr.
    pub verbose: bool,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            quotas: QuotaConfig::default(),
            disk_reserve: 64 << 20,
            retention: Duration::from_secs(24 * 3600),
            sweep_every: Duration::from_secs(600),
            verbose: false,
        }
    }
}

/// Why a store cannot be opened or changed.
#[derive(Debug)]
pub enum StoreError {
    /// A file operation failed; `what` says which.
    Io { what: String, source: io::Error },
    /// Another process holds the store's lock.
    Locked(PathBuf),
    /// The JWT key file is empty (spec 5: startup stops).
    EmptyKey(PathBuf),
    /// No record has this id (`rm`).
    NotFound(Uuid),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io { what, source } => write!(f, "filestorage: {what}: {source}"),
            StoreError::Locked(p) => write!(
                f,
                "filestorage: {} is locked: another server (or rm) uses this store",
                p.display()
            ),
            StoreError::EmptyKey(p) => write!(f, "filestorage: jwt key {}: empty", p.display()),
            StoreError::NotFound(id) => write!(f, "filestorage: no stored file {id}"),
        }
    }
}

impl std::error::Error for StoreError {}

pub(super) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Io { what, source }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(super) fn storage_error() -> Reason {
    Reason::new(Code::StorageError)
}

/// What an object looked like when its record was made (or at start): FETCH refuses an object
/// whose size or mtime moved since (`storage-error`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ObjectStamp {
    pub size: u64,
    pub mtime_ns: i128,
}

impl ObjectStamp {
    pub fn of(m: &fs::Metadata) -> ObjectStamp {
        ObjectStamp {
            size: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        }
    }
}

/// One partial transfer (`partial/<fid>/`), shared by every connection that has it active.
#[derive(Debug)]
pub struct Partial {
    pub(super) fid: Uuid,
    pub(super) dir: PathBuf,
    pub(super) inner: Mutex<PartialInner>,
    /// Signalled when claims settle and when creation ends.
    pub(super) settled: Condvar,
}

#[derive(Debug, Default)]
pub(super) struct PartialInner {
    /// Being created by an AUTHENTICATION: wait on `settled`.
    pub creating: bool,
    /// Gone (complete, expired, or creation failed): look the fid up again.
    pub deleted: bool,
    pub state: Option<PartialState>,
    /// Chunks written by some connection and not yet durable.
    pub claimed: HashSet<(u32, u64)>,
    pub parts: Vec<Option<Arc<File>>>,
    /// In-order hashes per file (`None`: hash the part from disk at completion).
    pub hashes: Vec<Option<FileHash>>,
    pub journal: Option<File>,
    pub journal_records: u64,
    /// Connections that hold this transfer active (retention leaves it alone).
    pub active: usize,
    /// Unix seconds of the last accepted chunk or AUTHENTICATION.
    pub touched: u64,
    /// The bytes still to be written, promised in the process-wide [`ledger`] (parts are
    /// sparse): shrinks as chunks become held, given back whole when the partial goes
    /// (completion, retention, a failed creation), by its drop: exactly once.
    pub promise: Option<ledger::Promise>,
    /// Parts created in this folder, and how many of those creations a directory fsync has
    /// made durable: a chunk is journaled (and acknowledged) only once its part's name is.
    pub parts_created: u64,
    pub parts_dir_synced: u64,
}

impl Partial {
    pub(super) fn new(fid: Uuid, dir: PathBuf) -> Partial {
        Partial {
            fid,
            dir,
            inner: Mutex::new(PartialInner::default()),
            settled: Condvar::new(),
        }
    }

    pub fn fid(&self) -> Uuid {
        self.fid
    }

    /// Opens (creating it sparse, sized to the file) the part of `file`.
    pub(super) fn part(&self, g: &mut PartialInner, file: u32) -> io::Result<Arc<File>> {
        if let Some(f) = g.parts.get(file as usize).and_then(Option::as_ref) {
            return Ok(f.clone());
        }
        let size = g
            .state
            .as_ref()
            .and_then(|s| s.files.get(file as usize))
            .map(|f| f.size)
            .ok_or_else(|| io::Error::other("no such file"))?;
        let (f, created) = open_part(&self.dir, file, size)?;
        if created {
            g.parts_created += 1;
        }
        let f = Arc::new(f);
        if g.parts.len() <= file as usize {
            g.parts.resize(file as usize + 1, None);
        }
        g.parts[file as usize] = Some(f.clone());
        Ok(f)
    }
}

/// `<dir>/<file>.part`, read-write, created 0600 and sized (sparse) to `size` if new; `true`
/// when this call created it (its name is not durable until the folder is synced).
pub(super) fn open_part(dir: &Path, file: u32, size: u64) -> io::Result<(File, bool)> {
    let path = part_path(dir, file);
    let open = |create_new: bool| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(create_new)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&path)
    };
    let (f, created) = match open(false) {
        Ok(f) => (f, false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => (open(true)?, true),
        Err(e) => return Err(e),
    };
    if f.metadata()?.len() != size {
        f.set_len(size)?;
    }
    Ok((f, created))
}

pub(super) fn part_path(dir: &Path, file: u32) -> PathBuf {
    dir.join(format!("{file}.part"))
}

/// A published file to register with the catalog once its inode is settled (removing a
/// part's name changes the inode's ctime, which the catalog's stamp holds).
#[derive(Debug)]
#[must_use]
pub(super) struct Registration {
    pub(super) path: PathBuf,
    pub(super) xxh: Option<u64>,
    pub(super) sha: [u8; 32],
}

/// A chunk written and waiting to be made durable (or, for a follower, waiting for another
/// connection's claim).
#[derive(Debug)]
pub struct PendingChunk {
    pub(super) partial: Arc<Partial>,
    pub(super) file: u32,
    pub(super) n: u64,
    pub(super) len: u64,
}

/// What [`Store::begin_write`] did.
#[derive(Debug)]
pub enum Begun {
    /// Answer now.
    Done(WriteOutcome),
    /// Written; durable after [`Store::finish_writes`].
    Leader(PendingChunk),
    /// Another connection is writing this chunk: answer once its claim settles.
    Follower(PendingChunk),
}

/// An accepted AUTHENTICATION.
#[derive(Debug)]
pub struct Authed {
    /// The transfer now active (`None` when nothing is left to receive).
    pub partial: Option<Arc<Partial>>,
    pub missing: MissingSet,
}

/// An open object file kept by a connection between FETCHes.
#[derive(Debug, Default)]
pub struct FetchCache {
    open: Option<([u8; 32], File)>,
}

/// The catalog's public entries as last put into the index.
#[derive(Debug)]
struct CatalogView {
    generation: Option<u64>,
    published_seen: u64,
    built: Instant,
}

/// The store (see the module doc). Open it with [`Store::open`], which recovers before anything
/// is served.
pub struct Store {
    /// The served folder, anchored at the catalog root's descriptor
    /// ([`super::anchored_path`]): publishing links into it.
    pub(super) root: PathBuf,
    /// The store folder, anchored at [`store_dir`](Self::store_dir)'s descriptor: every store
    /// file is reached below it, never through `.ferry/` by name.
    pub(super) dir: PathBuf,
    /// `.ferry/filestorage`, opened once from the catalog's `.ferry` descriptor and checked
    /// private; kept open for as long as `dir` points through it.
    pub(super) store_dir: crate::dir::Dir,
    pub(super) catalog: Arc<CatalogHandle>,
    pub(super) opts: StoreOptions,
    pub(super) ingest: IngestDir,
    pub(super) _lock: File,
    pub(super) index: RwLock<Index>,
    view: Mutex<CatalogView>,
    pub(super) records: RwLock<HashMap<Uuid, Record>>,
    /// Names the store published into the served folder, with their content: the catalog's
    /// files under these names are the store's, not public catalog entries.
    pub(super) published: Mutex<HashMap<String, [u8; 32]>>,
    /// Bumped when `published` changes, so the catalog view is rebuilt.
    pub(super) published_generation: AtomicU64,
    pub(super) objects: Mutex<HashMap<[u8; 32], ObjectStamp>>,
    pub(super) partials: Mutex<HashMap<Uuid, Arc<Partial>>>,
    pub(super) ledgers: Mutex<HashMap<u32, Arc<Mutex<UidLedger>>>>,
    /// st_dev of the store: the key of its file system in the process-wide [`ledger`].
    pub(super) dev: u64,
    stop: Mutex<bool>,
    stop_cv: Condvar,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.store_dir.path())
            .finish()
    }
}

impl Store {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn assemble(
        root: PathBuf,
        dir: PathBuf,
        store_dir: crate::dir::Dir,
        catalog: Arc<CatalogHandle>,
        opts: StoreOptions,
        ingest: IngestDir,
        lock_file: File,
    ) -> Store {
        let dev = store_dir.stat().map_or(0, |st| st.dev());
        Store {
            root,
            dir,
            catalog,
            opts,
            ingest,
            _lock: lock_file,
            index: RwLock::new(Index::new()),
            store_dir,
            view: Mutex::new(CatalogView {
                generation: None,
                published_seen: 0,
                built: Instant::now(),
            }),
            records: RwLock::new(HashMap::new()),
            published: Mutex::new(HashMap::new()),
            published_generation: AtomicU64::new(1),
            objects: Mutex::new(HashMap::new()),
            partials: Mutex::new(HashMap::new()),
            ledgers: Mutex::new(HashMap::new()),
            dev,
            stop: Mutex::new(false),
            stop_cv: Condvar::new(),
        }
    }

    /// The store folder, `<root>/.ferry/filestorage` (for messages).
    pub fn dir(&self) -> &Path {
        self.store_dir.path()
    }

    pub(super) fn objects_dir(&self) -> PathBuf {
        self.dir.join("objects")
    }
    pub(super) fn records_dir(&self) -> PathBuf {
        self.dir.join("records")
    }
    pub(super) fn partial_dir(&self) -> PathBuf {
        self.dir.join("partial")
    }
    pub(super) fn object_path(&self, sha: &[u8; 32]) -> PathBuf {
        self.objects_dir().join(hex::encode(sha))
    }

    pub(super) fn log(&self, msg: fmt::Arguments<'_>) {
        if self.opts.verbose {
            eprintln!("filestorage: {msg}");
        }
    }

    /// The ledger of `uid` (its own lock).
    pub(super) fn ledger(&self, uid: u32) -> Arc<Mutex<UidLedger>> {
        lock(&self.ledgers).entry(uid).or_default().clone()
    }

    /// Usage and reservations of `uid` now (tests and logs).
    pub fn ledger_of(&self, uid: u32) -> UidLedger {
        *lock(&self.ledger(uid))
    }

    /// Records held (complete stored files).
    pub fn record_count(&self) -> usize {
        self.records
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Partial transfers held.
    pub fn partial_count(&self) -> usize {
        lock(&self.partials).len()
    }

    /// The file system's free space now (statvfs).
    fn statvfs_free(&self) -> u64 {
        self.ingest.available_bytes().unwrap_or(0)
    }

    /// Free space for spec 7.4's `min_free` check: the file system's, less what every
    /// unfinished upload of the process (this store's partial transfers, TEJ, FastDP) was
    /// promised and has not written yet. `disk_reserve` is not taken off here: the ledger's
    /// promise checks it on its own, so a batch needs `min_free` left after it (the spec's
    /// rule) and `disk_reserve` left after every promise (ferry's), not both added up.
    fn free_bytes(&self) -> u64 {
        self.statvfs_free()
            .saturating_sub(ledger::promised(self.dev))
    }

    /// Promises `bytes` still to be written by a partial found at start (admitted before).
    pub(super) fn promise_recovered(&self, bytes: u64) -> ledger::Promise {
        ledger::Promise::unchecked(self.dev, bytes)
    }

    // ------------------------------------------------------------------ AUTHENTICATION

    /// Spec 4.2 steps 2-4 for an AUTHENTICATION whose shape and token passed.
    pub fn authenticate(&self, call: &AuthCall, now: u64) -> Result<Authed, Reason> {
        loop {
            let (p, creator) = {
                let mut map = lock(&self.partials);
                match map.get(&call.fid) {
                    Some(p) => (p.clone(), false),
                    None => {
                        let p = Arc::new(Partial::new(
                            call.fid,
                            self.partial_dir().join(call.fid.to_string()),
                        ));
                        lock(&p.inner).creating = true;
                        map.insert(call.fid, p.clone());
                        (p, true)
                    }
                }
            };
            let mut g = lock(&p.inner);
            if creator {
                let r = self.create_batch(&p, &mut g, call, now);
                let keep = matches!(r, Ok(true));
                g.creating = false;
                if keep {
                    g.active += 1;
                    let missing = g.state.as_ref().map(|s| s.missing.clone());
                    p.settled.notify_all();
                    drop(g);
                    return Ok(Authed {
                        partial: Some(p),
                        missing: missing.unwrap_or_else(|| MissingSet::none(0)),
                    });
                }
                g.deleted = true;
                lock(&self.partials).remove(&call.fid);
                p.settled.notify_all();
                drop(g);
                return r.map(|_| Authed {
                    partial: None,
                    missing: MissingSet::none(call.files.len()),
                });
            }
            while g.creating {
                g = p.settled.wait(g).unwrap_or_else(PoisonError::into_inner);
            }
            if g.deleted {
                continue;
            }
            // A known fid: a resume (quotas are not checked again) or a conflict.
            plan_authentication(call, g.state.as_ref(), |_| None, MAX_TAGS)?;
            g.active += 1;
            g.touched = g.touched.max(now);
            // The AUTHENTICATION counts for retention, on disk too: the journal's mtime is what
            // the sweep and a restart read with `touched`, so touching it is enough. Rewriting
            // state.json instead (three fsyncs, megabytes for a file with many holes) let a
            // peer resuming in a loop make the server write without bound.
            let on_disk = g
                .journal
                .as_ref()
                .is_some_and(|j| j.set_modified(std::time::SystemTime::now()).is_ok());
            if !on_disk {
                if let Err(e) = self.fold(&p, &mut g) {
                    self.log(format_args!("{}: state: {e}", p.fid));
                }
            }
            let missing = g.state.as_ref().map(|s| s.missing.clone());
            drop(g);
            return Ok(Authed {
                partial: Some(p),
                missing: missing.unwrap_or_else(|| MissingSet::none(0)),
            });
        }
    }

    /// A new `fid`: plan, reserve, store the empty files, make the partial state durable.
    /// `Ok(true)` when a partial state now holds files to receive.
    fn create_batch(
        &self,
        p: &Partial,
        g: &mut PartialInner,
        call: &AuthCall,
        now: u64,
    ) -> Result<bool, Reason> {
        let plan = {
            let records = self.records.read().unwrap_or_else(PoisonError::into_inner);
            plan_authentication(call, None, |id| records.get(id).cloned(), MAX_TAGS)?
        };
        let AuthPlan::New(batch) = plan else {
            // Without a state the plan is never a resume.
            return Err(Reason::new(Code::Internal));
        };
        let limits = *self.opts.quotas.limits_for(call.uid);
        let reserve_sizes = batch.reserve_sizes(call);
        let has_transfer = batch.has_transfer();
        let reservation = {
            let ledger = self.ledger(call.uid);
            let mut l = lock(&ledger);
            l.try_reserve(&limits, &reserve_sizes, has_transfer, self.free_bytes())?
        };
        let receive: u64 = call
            .files
            .iter()
            .zip(&batch.fates)
            .filter(|(_, f)| **f == FileFate::Receive)
            .map(|(s, _)| s.size)
            .sum();
        let state = PartialState {
            uid: call.uid,
            files: call.files.clone(),
            tags: batch.tags.clone(),
            chunk_size: call.chunk_size,
            missing: batch.missing.clone(),
            touched: now,
        };
        // The bytes to receive are promised in the process-wide ledger, so that TEJ and FastDP
        // see them: checked again there, atomically with every other promise.
        let promise = match has_transfer.then(|| {
            ledger::Promise::admit(
                self.dev,
                self.opts.disk_reserve,
                receive,
                self.statvfs_free(),
            )
        }) {
            Some(Err(_)) => {
                lock(&self.ledger(call.uid)).release(reservation);
                return Err(Reason::with_detail(Code::QuotaExceeded, "disk"));
            }
            Some(Ok(p)) => Some(p),
            None => None,
        };
        // Empty files are stored at once (spec 4.2), before the partial state: a crash between
        // the two leaves records a later AUTHENTICATION finds complete, and nothing else.
        let mut stored = 0;
        let fail = |stored: u64, what: fmt::Arguments<'_>| {
            self.log(format_args!("{}: {what}", call.fid));
            let _ = fs::remove_dir_all(&p.dir);
            lock(&self.ledger(call.uid)).release(Reservation {
                files: reservation.files - stored,
                ..reservation
            });
            Err(storage_error())
        };
        for (i, fate) in batch.fates.iter().enumerate() {
            if *fate != FileFate::StoreEmpty {
                continue;
            }
            let spec = &call.files[i];
            match self.store_empty(call.fid, i as u32, spec, &batch.tags, call.uid, now) {
                Ok(_) => {
                    lock(&self.ledger(call.uid)).complete_file(0);
                    stored += 1;
                }
                Err(e) => return fail(stored, format_args!("store empty file {i}: {e}")),
            }
        }
        if !has_transfer {
            return Ok(false);
        }
        let journal = match self
            .make_partial_dir(p, &state)
            .and_then(|()| open_journal(&p.dir))
        {
            Ok(j) => j,
            Err(e) => return fail(stored, format_args!("create partial state: {e}")),
        };
        g.promise = promise;
        let n = call.files.len();
        let public = batch.tags.iter().any(|t| t == PUBLIC);
        g.parts = vec![None; n];
        g.hashes = (0..n).map(|_| Some(FileHash::new(public))).collect();
        g.journal = Some(journal);
        g.journal_records = 0;
        g.touched = now;
        g.state = Some(state);
        Ok(true)
    }

    /// `partial/<fid>/` with its `state.json` and an empty journal, durably.
    fn make_partial_dir(&self, p: &Partial, state: &PartialState) -> io::Result<()> {
        disk::ensure_dir(&p.dir)?;
        let mut json = Vec::new();
        state.encode(&mut json);
        disk::write_atomic(&p.dir, "state.json", &json)?;
        open_journal(&p.dir)?.set_len(0)?;
        disk::sync_dir(&p.dir)?;
        disk::sync_dir(&self.partial_dir())
    }

    /// The connection no longer holds `p` active.
    pub fn release(&self, p: &Partial) {
        let mut g = lock(&p.inner);
        g.active = g.active.saturating_sub(1);
    }

    // ------------------------------------------------------------------ retention

    /// Deletes the partial state of a batch that has nothing left to receive.
    pub(super) fn finish_batch(&self, p: &Partial, g: &mut PartialInner) {
        g.deleted = true;
        g.journal = None;
        g.parts.clear();
        g.promise = None;
        lock(&self.partials).remove(&p.fid);
        if let Some(s) = &g.state {
            lock(&self.ledger(s.uid)).finish_transfer();
        }
        if let Err(e) = fs::remove_dir_all(&p.dir) {
            self.log(format_args!("{}: remove partial state: {e}", p.fid));
        }
    }

    /// Spec 7.4 retention: deletes every partial transfer untouched for `retention` that no
    /// connection holds, releasing its reservation. Returns how many went.
    pub fn sweep(&self, now: u64) -> usize {
        let retention = self.opts.retention.as_secs();
        let all: Vec<Arc<Partial>> = lock(&self.partials).values().cloned().collect();
        let mut removed = 0;
        for p in all {
            let Ok(mut g) = p.inner.try_lock() else {
                continue;
            };
            if g.creating || g.deleted || g.active > 0 {
                continue;
            }
            let journal_mtime = g
                .journal
                .as_ref()
                .and_then(|j| j.metadata().ok())
                .map_or(0, |m| m.mtime().max(0) as u64);
            let last = g.touched.max(journal_mtime);
            if last.saturating_add(retention) > now {
                continue;
            }
            self.expire(&p, &mut g);
            removed += 1;
        }
        removed
    }

    /// Deletes an abandoned partial transfer and releases what it still reserved.
    pub(super) fn expire(&self, p: &Partial, g: &mut PartialInner) {
        let Some(state) = g.state.as_ref() else {
            return;
        };
        let records = self.records.read().unwrap_or_else(PoisonError::into_inner);
        let mut remaining = Reservation {
            transfer: true,
            ..Reservation::default()
        };
        for (i, f) in state.files.iter().enumerate() {
            if !records.contains_key(&store_id(&p.fid, i as u64)) {
                remaining.bytes += f.size;
                remaining.files += 1;
            }
        }
        drop(records);
        lock(&self.ledger(state.uid)).release(remaining);
        g.deleted = true;
        g.journal = None;
        g.parts.clear();
        g.promise = None;
        lock(&self.partials).remove(&p.fid);
        self.log(format_args!(
            "retention: partial transfer {} deleted",
            p.fid
        ));
        if let Err(e) = fs::remove_dir_all(&p.dir) {
            eprintln!("filestorage: retention: remove {}: {e}", p.dir.display());
        }
        p.settled.notify_all();
    }

    /// Runs the retention sweep every `sweep_every` until [`stop`](Self::stop).
    pub fn spawn_sweeper(self: &Arc<Self>) -> io::Result<Sweeper> {
        let store = self.clone();
        let thread = std::thread::Builder::new()
            .name("filestorage-sweep".into())
            .spawn(move || {
                let mut stopped = lock(&store.stop);
                while !*stopped {
                    let (g, timeout) = store
                        .stop_cv
                        .wait_timeout(stopped, store.opts.sweep_every)
                        .unwrap_or_else(PoisonError::into_inner);
                    stopped = g;
                    if *stopped {
                        break;
                    }
                    if timeout.timed_out() {
                        drop(stopped);
                        let n = store.sweep(super::unix_now().max(0) as u64);
                        if n > 0 {
                            eprintln!("filestorage: retention deleted {n} partial transfers");
                        }
                        stopped = lock(&store.stop);
                    }
                }
            })?;
        Ok(Sweeper {
            store: self.clone(),
            thread: Some(thread),
        })
    }

    /// Stops the sweeper thread.
    pub fn stop(&self) {
        *lock(&self.stop) = true;
        self.stop_cv.notify_all();
    }

    // ------------------------------------------------------------------ QUERY and FETCH

    /// Brings the catalog's public entries (spec 7.3) up to date with the live catalog, at most
    /// every [`VIEW_REBUILD_EVERY`] while it keeps changing.
    fn refresh_view(&self) {
        let snap = self.catalog.snapshot();
        let published_gen = self.published_generation.load(Ordering::SeqCst);
        let mut v = lock(&self.view);
        let current = v.generation == Some(snap.generation()) && v.published_seen == published_gen;
        if current || (v.generation.is_some() && v.built.elapsed() < VIEW_REBUILD_EVERY) {
            return;
        }
        let published = lock(&self.published).clone();
        let files: Vec<(&str, u64, [u8; 32])> = snap
            .entries()
            .filter(|e| published.get(e.file_name()) != Some(&e.sha256))
            .map(|e| (e.file_name(), e.size, e.sha256))
            .collect();
        self.index
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .set_catalog(files);
        v.generation = Some(snap.generation());
        v.published_seen = published_gen;
        v.built = Instant::now();
    }

    /// A QUERY (spec 6).
    pub fn query(&self, call: &QueryCall) -> QueryPage {
        self.refresh_view();
        let spec = QuerySpec {
            tags: &call.tags,
            name: call.name.as_deref(),
            after: call.after,
        };
        self.index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .query(call.uid, &spec, call.limit)
    }

    /// A FETCH (spec 6): reads the bytes into `buf` and returns whether they reach the end.
    pub fn fetch(
        &self,
        call: &FetchCall,
        cache: &mut FetchCache,
        buf: &mut Vec<u8>,
    ) -> Result<bool, Reason> {
        self.refresh_view();
        let entry = self
            .index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .visible(&call.id, call.uid)
            .cloned()
            .ok_or(Reason::new(Code::NotFound))?;
        let (range, eof) = fetch_range(entry.size, call.offset, call.length, call.max_fetch)?;
        let len = (range.end - range.start) as usize;
        buf.clear();
        buf.resize(len, 0);
        if len == 0 {
            return Ok(eof);
        }
        match entry.owner {
            Some(_) => self.read_object(&entry, range.start, buf, cache)?,
            None => {
                let snap = self.catalog.snapshot();
                let e = snap
                    .by_sha256(&entry.sha256)
                    .ok_or(Reason::new(Code::NotFound))?;
                if e.size != entry.size {
                    return Err(Reason::new(Code::NotFound));
                }
                let m = e.open().map_err(|_| storage_error())?;
                m.read_exact_at(range.start, buf)
                    .map_err(|_| storage_error())?;
            }
        }
        Ok(eof)
    }

    /// Reads from a record's object, checking it still has the size and mtime it had.
    fn read_object(
        &self,
        entry: &Entry,
        offset: u64,
        buf: &mut [u8],
        cache: &mut FetchCache,
    ) -> Result<(), Reason> {
        let expected = lock(&self.objects).get(&entry.sha256).copied();
        if cache.open.as_ref().is_none_or(|(s, _)| *s != entry.sha256) {
            let f = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(self.object_path(&entry.sha256))
                .map_err(|_| storage_error())?;
            cache.open = Some((entry.sha256, f));
        }
        let Some((_, f)) = cache.open.as_ref() else {
            return Err(storage_error());
        };
        let m = f.metadata().map_err(|_| storage_error())?;
        let stamp = ObjectStamp::of(&m);
        if !m.is_file() || stamp.size != entry.size || expected.is_some_and(|e| e != stamp) {
            cache.open = None;
            return Err(storage_error());
        }
        f.read_exact_at(buf, offset).map_err(|_| storage_error())
    }
}

/// Stops the retention sweeper on drop.
pub struct Sweeper {
    store: Arc<Store>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.store.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The journal of a partial transfer, opened for appending (created if missing).
pub(super) fn open_journal(dir: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(dir.join("journal"))
}

/// `<stem>.<tag>.<ext>`, or `<name>.<tag>` without an extension (a leading dot is no
/// extension); never shortened (spec 7.3: too long means not published).
pub(super) fn tagged_name(name: &str, tag: &str) -> String {
    match name.rfind('.') {
        Some(i) if i > 0 => format!("{}.{tag}{}", &name[..i], &name[i..]),
        _ => format!("{name}.{tag}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_names_follow_spec_7_3() {
        assert_eq!(tagged_name("notes.txt", "ed40853e"), "notes.ed40853e.txt");
        assert_eq!(tagged_name("README", "ed40853e"), "README.ed40853e");
        assert_eq!(tagged_name("a.tar.gz", "01234567"), "a.tar.01234567.gz");
    }
}
