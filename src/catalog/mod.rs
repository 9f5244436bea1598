//! The shared catalog: one served folder, scanned, hashed once and memory-mapped, seen by all
//! five protocols as immutable snapshots that follow the folder as it changes.
//!
//! [`CatalogHandle::open`] creates the root (and its `.ferry/` state folder) if missing, loads
//! the persistent index and its journal, lists the regular files directly in the root, hashes
//! only files whose stamp (dev, ino, size, mtime, ctime) is not in the index, compacts the
//! index and publishes the first [`Catalog`]. From then on every change is one small
//! **publish**: a new snapshot that shares all but O(log n) nodes with the previous one
//! (`tree.rs`), and one record appended to the index journal (`index.rs`). Readers keep whatever
//! `Arc<Catalog>` they hold, so a change never stalls a transfer and a transfer never stalls a
//! change; a reader sees the old or the new state, never half of one.
//!
//! ```text
//!  inotify (live.rs) --names--+                         +--> hash outside any lock
//!  Entry::open drift ---------+--> check name: classify,| (stable stamp first)
//!  SIGHUP / --watch / overflow --> full scan (list all) +--> changes (expected old, new)
//!  ingest add_ingested_file -----> one change (hashes known)                |
//!                                                                           v
//!      publish: under the state lock, each change applies only if its expected entry is
//!      still current; trees copy O(log n) nodes; generation + 1; journal gets one record
//!      per change; RwLock swap; Condvar wake (wait_for_change, JTP WATCH)
//! ```
//!
//! Who publishes: [`CatalogHandle::follow`] runs the live follower (inotify, with a polling
//! fallback), [`CatalogHandle::rescan`] the whole-folder scan, [`CatalogHandle::add_file`] /
//! [`add_ingested_file`](CatalogHandle::add_ingested_file) the uploads. Scans and the
//! follower's batches are serialised among themselves; uploads never wait for a hash.
//!
//! The catalog holds every regular file; names starting with `.`, non-UTF-8 names, non-regular
//! files and symlinks leading outside the root or through a hidden name (into `.ferry/`) are
//! excluded and logged once to stderr. Protocol-specific filtering (extensions, 4 GiB limits,
//! name lengths) is out of scope here.
//!
//! Every file is reached through descriptors opened once at start ([`crate::dir`]): the root's
//! for served files (listing, classifying, hashing and serving all resolve names beneath it,
//! with `O_NOFOLLOW | O_NONBLOCK`, and take stamps on the descriptor they read), and the
//! private `.ferry/` folder's for the index, its journal and (for the drivers) TLS material
//! and ingest folders. A local user who can write into the served folder can therefore swap
//! names, links and FIFOs at will: what is served is always a regular file inside the folder
//! whose stamp is the one its hashes were taken from, and nothing is ever written outside
//! `.ferry/`.
//!
//! Serving bytes goes through [`Entry::open`], which opens and maps the file on each call
//! ([`mapped::MappedFile`], no descriptor kept per entry: a catalog of any size costs no
//! descriptors at rest) and refuses a file that no longer matches the stamp its hashes were
//! taken from; a refusal also asks the follower to look at that name again, so a change no
//! event announced (a hard link made in another folder moves the ctime) is caught too.

pub(crate) mod index;
mod inotify;
mod live;
pub mod mapped;
mod scan;
mod tree;

pub use index::indexed_sha256;
pub use live::FollowOptions;
pub use mapped::{FileStamp, MappedFile};
pub use scan::SkipReason;

use crate::dir::Dir;
use index::{Index, IndexRecord, Journal, JournalOp};
use scan::{Candidate, HashError, Hashes, Root, STATE_DIR};
use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};
use tree::{Order, Tree};

/// How the catalog behaves; plain data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CatalogOptions {
    /// Log every excluded name on every scan, and every file the live catalog publishes or
    /// retires (default `false`: each exclusion is logged the first time it is seen).
    pub verbose: bool,
}

/// Journal records that may pile up before the index is rewritten, at least; the bound grows
/// with the index (half its records), so rewriting stays amortised O(1) per published file.
const COMPACT_MIN_RECORDS: u64 = 4096;
/// Changes in one publish above which the snapshot is rebuilt whole (O(n log n)) instead of
/// edited one change at a time (O(k log n)): past about n/8 rebuilding is the cheaper.
const REBUILD_MIN_CHANGES: usize = 1024;
/// Names waiting for a drift re-check, at most; more are dropped (a full scan catches them).
const MAX_DRIFT: usize = 4096;

/// What a file must still be for known hashes to be registered for it: its inode, and with
/// `size_mtime` its size and modification time too.
#[derive(Clone, Copy, Debug)]
struct Same {
    dev: u64,
    ino: u64,
    size_mtime: Option<(u64, i128)>,
}

impl Same {
    fn matches(&self, now: &FileStamp) -> bool {
        (self.dev, self.ino) == (now.dev, now.ino)
            && self
                .size_mtime
                .is_none_or(|(size, mtime)| (size, mtime) == (now.size, now.mtime_ns))
    }
}

/// One served file: its identity and its hashes. It holds no descriptor: [`Entry::open`]
/// opens the file when bytes are wanted.
pub struct Entry {
    /// NFC basename, UTF-8.
    pub name: String,
    /// On-disk path (`root.join(on-disk name)`).
    pub path: PathBuf,
    /// Size in bytes (equal to `stamp.size`).
    pub size: u64,
    /// Stamp of the version that was hashed.
    pub stamp: FileStamp,
    /// xxHash64, seed 0, of the whole content.
    pub xxh64: u64,
    /// SHA-256 of the whole content.
    pub sha256: [u8; 32],
    /// The root every open goes through, and where a failed open reports its name.
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("size", &self.size)
            .field("stamp", &self.stamp)
            .field("xxh64", &self.xxh64_hex())
            .field("sha256", &self.sha256_hex())
            .finish()
    }
}

impl Entry {
    /// The on-disk name's bytes: the path after its last `/` (paths are `root.join(name)`
    /// and a name never holds a `/`).
    fn disk_name_bytes(&self) -> &[u8] {
        let p = self.path.as_os_str().as_bytes();
        let start = p.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
        &p[start..]
    }

    /// The on-disk name (the index key).
    fn disk_name(&self) -> &OsStr {
        OsStr::from_bytes(self.disk_name_bytes())
    }

    /// The on-disk name, byte-exact (`name` is its NFC form). Unique within a snapshot, unlike
    /// `name`: two spellings of one NFC name are two files. Protocols that address files by an
    /// exact path (TEJ) use this.
    pub fn file_name(&self) -> &str {
        // The catalog keeps only UTF-8 names.
        std::str::from_utf8(self.disk_name_bytes()).unwrap_or_default()
    }

    /// Opens the file beneath the root ([`Dir::open_beneath`]: no symlink leading out of the
    /// root or into `.ferry/` is followed, a FIFO never blocks), checks on the descriptor that
    /// it is a regular file whose stamp is still `stamp`, and maps it. Err(io::ErrorKind::Other
    /// "changed") if the file now on disk is another version (then the entry must not be
    /// served); any failure also asks the live catalog to look at this name again (a
    /// metadata-only change then gets a fresh Entry with the new stamp, after a re-hash).
    ///
    /// Each call opens anew and the caller holds the descriptor and mapping only as long as it
    /// keeps the returned value, so descriptors in use follow the transfers under way, not the
    /// size of the catalog. (Measured: an open and a mapping per small image keep JTP's small-
    /// image rate; see the README's security model.) A transfer keeps its `MappedFile`, and
    /// with it the inode it opened, to its end.
    pub fn open(&self) -> io::Result<Arc<MappedFile>> {
        let result = self.open_checked();
        if result.is_err() {
            self.shared.drift.report(self.disk_name());
        }
        result
    }

    /// Whether the file under this entry's name is, as far as a look by name can tell, the
    /// version the entry was hashed from: one `fstatat` that does not follow a link for a plain
    /// name (a link is resolved and opened as [`open`](Self::open) does). For counting what a
    /// response will send without holding every file open; the send itself must still
    /// [`open`](Self::open) the file, which checks again on the descriptor.
    pub fn is_current(&self) -> bool {
        match self.shared.root.stat_at(self.disk_name()) {
            Ok(st) if st.is_file() => FileStamp::from_stat(&st) == self.stamp,
            Ok(st) if st.is_symlink() => self.open_checked().is_ok(),
            _ => false,
        }
    }

    fn open_checked(&self) -> io::Result<Arc<MappedFile>> {
        let opened = self
            .shared
            .root
            .open_beneath(self.disk_name(), &self.shared.roots)?;
        let m = MappedFile::from_file(opened.file)?;
        if m.stamp() != self.stamp {
            return Err(changed_error());
        }
        Ok(Arc::new(m))
    }

    /// 16 lowercase hex digits.
    pub fn xxh64_hex(&self) -> String {
        format!("{:016x}", self.xxh64)
    }

    /// 64 lowercase hex digits.
    pub fn sha256_hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn record(&self) -> IndexRecord {
        IndexRecord {
            stamp: self.stamp,
            xxh64: self.xxh64,
            sha256: self.sha256,
        }
    }

    fn inode(&self) -> (u64, u64) {
        (self.stamp.dev, self.stamp.ino)
    }
}

fn changed_error() -> io::Error {
    io::Error::other("changed")
}

/// What every entry of one catalog shares.
#[derive(Debug)]
struct Shared {
    /// The served folder, opened once: every served file is opened beneath it.
    root: Arc<Dir>,
    /// Paths an absolute symlink target may begin with to count as inside the root: the
    /// root's canonical path and its absolute path as named.
    roots: Vec<PathBuf>,
    /// Names whose opens failed, for the follower.
    drift: Drift,
}

impl Shared {
    fn scan_root(&self) -> Root<'_> {
        Root {
            dir: &self.root,
            roots: &self.roots,
        }
    }
}

/// Names whose entries failed to open (see [`Entry::open`]), for the follower to re-check:
/// deduplicated, bounded by [`MAX_DRIFT`], and a wake-up for the follower when one arrives.
#[derive(Debug, Default)]
struct Drift {
    names: Mutex<HashSet<OsString>>,
    wake: Mutex<Option<live::Wake>>,
}

impl Drift {
    fn report(&self, name: &OsStr) {
        let mut names = lock(&self.names);
        if names.len() >= MAX_DRIFT || names.contains(name) {
            return;
        }
        names.insert(name.to_owned());
        drop(names);
        if let Some(w) = lock(&self.wake).as_ref() {
            w.wake();
        }
    }

    fn take(&self) -> HashSet<OsString> {
        std::mem::take(&mut *lock(&self.names))
    }
}

/// Catalog order: NFC name bytes, then xxh64, then the on-disk name (unique).
struct CatalogOrder;
impl Order<Arc<Entry>> for CatalogOrder {
    fn cmp(a: &Arc<Entry>, b: &Arc<Entry>) -> Ordering {
        (a.name.as_bytes(), a.xxh64, a.disk_name_bytes()).cmp(&(
            b.name.as_bytes(),
            b.xxh64,
            b.disk_name_bytes(),
        ))
    }
}

/// On-disk name bytes (unique).
struct FileNameOrder;
impl Order<Arc<Entry>> for FileNameOrder {
    fn cmp(a: &Arc<Entry>, b: &Arc<Entry>) -> Ordering {
        a.disk_name_bytes().cmp(b.disk_name_bytes())
    }
}

/// xxh64, then catalog order: the first entry of an id is the first in catalog order.
struct XxhOrder;
impl Order<Arc<Entry>> for XxhOrder {
    fn cmp(a: &Arc<Entry>, b: &Arc<Entry>) -> Ordering {
        a.xxh64.cmp(&b.xxh64).then_with(|| CatalogOrder::cmp(a, b))
    }
}

/// SHA-256, then catalog order.
struct ShaOrder;
impl Order<Arc<Entry>> for ShaOrder {
    fn cmp(a: &Arc<Entry>, b: &Arc<Entry>) -> Ordering {
        a.sha256
            .cmp(&b.sha256)
            .then_with(|| CatalogOrder::cmp(a, b))
    }
}

/// An immutable snapshot of the served folder: its entries in four orders that share every
/// `Arc<Entry>`, each a persistent tree (so the next snapshot shares almost all of it).
pub struct Catalog {
    generation: u64,
    order: Tree<Arc<Entry>, CatalogOrder>,
    files: Tree<Arc<Entry>, FileNameOrder>,
    by_xxh64: Tree<Arc<Entry>, XxhOrder>,
    by_sha256: Tree<Arc<Entry>, ShaOrder>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("generation", &self.generation)
            .field("len", &self.len())
            .finish()
    }
}

/// Entries of a [`Catalog`] in one of its orders; `skip`/`nth` jump in O(log n).
pub type Entries<'a> = tree::Iter<'a, Arc<Entry>>;

impl Catalog {
    /// Sorts `entries` into each order (O(n log n)); names must be unique.
    fn from_entries(generation: u64, mut entries: Vec<Arc<Entry>>) -> Catalog {
        entries.sort_by(CatalogOrder::cmp);
        let order = Tree::from_sorted(&entries);
        entries.sort_by(FileNameOrder::cmp);
        let files = Tree::from_sorted(&entries);
        entries.sort_by(XxhOrder::cmp);
        let by_xxh64 = Tree::from_sorted(&entries);
        entries.sort_by(ShaOrder::cmp);
        let by_sha256 = Tree::from_sorted(&entries);
        Catalog {
            generation,
            order,
            files,
            by_xxh64,
            by_sha256,
        }
    }

    /// The same entries under a new generation, sharing every node (O(1)).
    fn next_generation(&self) -> Catalog {
        Catalog {
            generation: self.generation + 1,
            order: self.order.clone(),
            files: self.files.clone(),
            by_xxh64: self.by_xxh64.clone(),
            by_sha256: self.by_sha256.clone(),
        }
    }

    fn insert(&mut self, e: &Arc<Entry>) {
        self.order.insert(Arc::clone(e));
        self.files.insert(Arc::clone(e));
        self.by_xxh64.insert(Arc::clone(e));
        self.by_sha256.insert(Arc::clone(e));
    }

    fn remove(&mut self, e: &Arc<Entry>) {
        self.order.remove(e);
        self.files.remove(e);
        self.by_xxh64.remove(e);
        self.by_sha256.remove(e);
    }

    /// Increases with every swap.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Entries sorted by NFC name bytes ascending, ties by xxh64 ascending (then by on-disk
    /// name). An exact-size iterator; `skip(n)` costs O(log n), not O(n).
    pub fn entries(&self) -> Entries<'_> {
        self.order.iter()
    }

    /// The first entry in catalog order with this xxHash64.
    pub fn by_xxh64(&self, id: u64) -> Option<&Arc<Entry>> {
        self.by_xxh64
            .iter_from(|e| e.xxh64 < id)
            .next()
            .filter(|e| e.xxh64 == id)
    }

    /// The first entry in catalog order with this SHA-256.
    pub fn by_sha256(&self, id: &[u8; 32]) -> Option<&Arc<Entry>> {
        self.by_sha256
            .iter_from(|e| e.sha256 < *id)
            .next()
            .filter(|e| e.sha256 == *id)
    }

    /// The first entry in catalog order with this NFC name.
    pub fn by_name(&self, nfc_name: &str) -> Option<&Arc<Entry>> {
        let key = nfc_name.as_bytes();
        self.order
            .iter_from(|e| e.name.as_bytes() < key)
            .next()
            .filter(|e| e.name.as_bytes() == key)
    }

    /// The entry whose on-disk name is exactly `file_name` (see [`Entry::file_name`]).
    pub fn by_file_name(&self, file_name: &str) -> Option<&Arc<Entry>> {
        self.by_disk_name(OsStr::new(file_name))
    }

    fn by_disk_name(&self, name: &OsStr) -> Option<&Arc<Entry>> {
        let key = name.as_bytes();
        self.files.get_by(|e| e.disk_name_bytes().cmp(key))
    }

    /// Entries in byte order of their on-disk names, starting after `after` (`""`: from the
    /// first): what a paged listing by path needs, in O(log n) to start.
    pub fn files_after(&self, after: &str) -> Entries<'_> {
        let key = after.as_bytes();
        self.files.iter_from(|e| e.disk_name_bytes() <= key)
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// What one scan did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RescanReport {
    /// Files in the resulting catalog.
    pub files: usize,
    /// Files whose content was read and hashed by this scan.
    pub hashed: usize,
    /// Files whose hashes came from the index or the previous snapshot.
    pub reused: usize,
    /// Names excluded (hidden, non-UTF-8, non-regular, bad symlinks, changed while hashing);
    /// the `.ferry/` state folder is not counted.
    pub skipped: usize,
    /// A new snapshot was swapped in.
    pub changed: bool,
    /// Wall time of the scan.
    pub elapsed: Duration,
}

/// Errors of the catalog layer.
#[derive(Debug)]
pub enum CatalogError {
    /// A filesystem operation on `path` failed.
    Io { path: PathBuf, source: io::Error },
    /// `add_file` was given a path whose folder is not the root.
    NotInRoot { path: PathBuf },
    /// `add_file` was given a file the catalog excludes.
    Excluded { path: PathBuf, reason: SkipReason },
    /// The file changed while it was being hashed.
    Changed { path: PathBuf },
}

impl std::fmt::Display for CatalogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CatalogError::Io { path, source } => {
                write!(f, "catalog: {}: {source}", path.display())
            }
            CatalogError::NotInRoot { path } => {
                write!(f, "catalog: {} is not directly in the root", path.display())
            }
            CatalogError::Excluded { path, reason } => {
                write!(f, "catalog: {} is excluded: {reason}", path.display())
            }
            CatalogError::Changed { path } => {
                write!(f, "catalog: {} changed while hashing", path.display())
            }
        }
    }
}

impl std::error::Error for CatalogError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CatalogError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CatalogError + '_ {
    move |source| CatalogError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One change to publish: replace the current entry of `name` (which must still be
/// `expected`, compared by pointer) with `new` (`None`: remove it).
#[derive(Debug)]
struct Change {
    name: OsString,
    expected: Option<Arc<Entry>>,
    new: Option<Arc<Entry>>,
}

fn same(a: Option<&Arc<Entry>>, b: Option<&Arc<Entry>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

/// What scans and the follower's batches share (under the `scanning` lock).
#[derive(Default)]
struct ScanLog {
    /// Exclusions already logged, pruned to names still present by full scans.
    logged: HashSet<(OsString, SkipReason)>,
}

/// What every publisher shares (under the `state` lock, held only while publishing).
struct PublishState {
    /// Records as the index plus journal on disk hold them (after a failed write: as they
    /// should hold them, and `unsaved` says so).
    saved: Index,
    /// The open journal; `None` if it could not be opened (changes then wait for a compaction).
    journal: Option<Journal>,
    /// Changes not in any file on disk (a failed write, or no journal): compact soon.
    unsaved: u64,
    /// The index file must be rewritten (it was missing or corrupt).
    needs_save: bool,
    /// Last index or journal write error logged, to avoid repeating it on every change.
    last_save_error: Option<String>,
    /// The entries of each (dev, ino): hard links and symlinks of one file, whose stamps move
    /// together. One entry per inode is the rule, so the first lives in `inodes` and any more
    /// in `more_inodes` (an `Arc` per entry, no name copies: 24 bytes a slot).
    inodes: HashMap<(u64, u64), Arc<Entry>>,
    more_inodes: HashMap<(u64, u64), Vec<Arc<Entry>>>,
}

impl PublishState {
    fn link(&mut self, e: &Arc<Entry>) {
        match self.inodes.entry(e.inode()) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(Arc::clone(e));
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                self.more_inodes
                    .entry(e.inode())
                    .or_default()
                    .push(Arc::clone(e));
            }
        }
    }

    fn unlink(&mut self, e: &Arc<Entry>) {
        let key = e.inode();
        if let Some(more) = self.more_inodes.get_mut(&key) {
            if let Some(i) = more.iter().position(|x| Arc::ptr_eq(x, e)) {
                more.swap_remove(i);
            } else if self.inodes.get(&key).is_some_and(|x| Arc::ptr_eq(x, e)) {
                if let Some(next) = more.pop() {
                    self.inodes.insert(key, next);
                }
            }
            if more.is_empty() {
                self.more_inodes.remove(&key);
            }
        } else if self.inodes.get(&key).is_some_and(|x| Arc::ptr_eq(x, e)) {
            self.inodes.remove(&key);
        }
    }

    /// On-disk names of the entries of one inode.
    fn names_of(&self, inode: (u64, u64)) -> impl Iterator<Item = &OsStr> {
        self.inodes
            .get(&inode)
            .into_iter()
            .chain(self.more_inodes.get(&inode).into_iter().flatten())
            .map(|e| e.disk_name())
    }
}

/// The live catalog, shared as `Arc<CatalogHandle>`.
pub struct CatalogHandle {
    root: PathBuf,
    /// `root/.ferry`, opened once, private ([`Dir::private_subdir`]).
    state_fd: Arc<Dir>,
    state_dir: PathBuf,
    opts: CatalogOptions,
    /// Serialises whole-folder scans and the follower's batches; uploads never take it.
    scanning: Mutex<ScanLog>,
    /// Held only while a change is published (never while hashing).
    state: Mutex<PublishState>,
    current: RwLock<Arc<Catalog>>,
    generation: Mutex<u64>,
    generation_changed: Condvar,
    report: Mutex<RescanReport>,
    shared: Arc<Shared>,
    /// Whole-folder scans so far (open included).
    full_scans: AtomicU64,
}

impl std::fmt::Debug for CatalogHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogHandle")
            .field("root", &self.root)
            .field("generation", &self.snapshot().generation())
            .finish()
    }
}

/// Locks ignoring poison: every critical section leaves its data consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A name to look at again (from an event, a drift report or a retry), and what the last
/// look saw.
#[derive(Clone, Debug)]
struct Check {
    name: OsString,
    /// The stamp seen by the previous look: a file is published only once two looks agree.
    seen: Option<FileStamp>,
    /// The file is being written: take its entry out, publish nothing.
    retire_only: bool,
}

/// What a batch of checks leaves to do later.
#[derive(Debug, Default)]
struct CheckOutcome {
    /// Look again after the settle time, with the stamp seen now.
    later: Vec<(OsString, Option<FileStamp>)>,
    /// Look at once: other names of an inode that changed (their ctime moved with it).
    now: Vec<OsString>,
}

impl CatalogHandle {
    /// Creates root and root/.ferry if missing, opens both once (the root following the path
    /// as given; `.ferry` without following a link, and only if it belongs to the user running
    /// ferry and nobody else may write it: [`CatalogError::Io`] says why otherwise), loads the
    /// index and its journal, scans, hashes what changed, compacts the index, returns the
    /// handle.
    pub fn open(root: &Path, opts: CatalogOptions) -> Result<Arc<CatalogHandle>, CatalogError> {
        let state_dir = root.join(STATE_DIR);
        let root_dir = Dir::create_all(root).map_err(io_err(root))?;
        let state_fd = Arc::new(
            root_dir
                .private_subdir(STATE_DIR, true)
                .map_err(io_err(root))?,
        );
        // Only to recognise absolute symlink targets inside the root: every name is still
        // resolved beneath the root's descriptor.
        let mut roots = vec![std::fs::canonicalize(root).map_err(io_err(root))?];
        if let Ok(abs) = std::path::absolute(root) {
            if !roots.contains(&abs) {
                roots.push(abs);
            }
        }
        let (mut saved, needs_save) = match index::load(&state_fd) {
            Ok(idx) => (idx, false),
            Err(index::IndexError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                (Index::new(), true)
            }
            Err(e) => {
                eprintln!(
                    "catalog: ignoring {}: {e}",
                    state_dir.join(index::INDEX_FILE).display()
                );
                (Index::new(), true)
            }
        };
        let journal = match Journal::open(&state_fd) {
            Ok((j, ops, warning)) => {
                if let Some(w) = warning {
                    eprintln!(
                        "catalog: {}: {w}",
                        state_dir.join(index::JOURNAL_FILE).display()
                    );
                }
                for op in ops {
                    op.apply(&mut saved);
                }
                Some(j)
            }
            Err(e) => {
                eprintln!(
                    "catalog: cannot open {}: {e}",
                    state_dir.join(index::JOURNAL_FILE).display()
                );
                None
            }
        };
        let handle = Arc::new(CatalogHandle {
            root: root.to_owned(),
            state_fd,
            state_dir,
            opts,
            scanning: Mutex::new(ScanLog::default()),
            state: Mutex::new(PublishState {
                saved,
                journal,
                unsaved: 0,
                needs_save,
                last_save_error: None,
                inodes: HashMap::new(),
                more_inodes: HashMap::new(),
            }),
            current: RwLock::new(Arc::new(Catalog::from_entries(0, Vec::new()))),
            generation: Mutex::new(0),
            generation_changed: Condvar::new(),
            report: Mutex::new(RescanReport::default()),
            shared: Arc::new(Shared {
                root: Arc::new(root_dir),
                roots,
                drift: Drift::default(),
            }),
            full_scans: AtomicU64::new(0),
        });
        handle.scan_now(true)?;
        Ok(handle)
    }

    /// The root as given to `open`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// root/.ferry (its path, for messages: reach its files through [`state`](Self::state)).
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir.clone()
    }

    /// root/.ferry, opened once at start and checked private: every state file (the index,
    /// its journal, TLS material, ingest folders) is created relative to it, never by path.
    pub fn state(&self) -> &Arc<Dir> {
        &self.state_fd
    }

    /// The root, opened once at start: what an ingest folder publishing into the catalog
    /// renames into.
    pub fn root_dir(&self) -> &Arc<Dir> {
        &self.shared.root
    }

    /// Whether `path` names the folder this catalog opened (same device and inode).
    fn is_root_at(&self, path: &Path) -> bool {
        match (std::fs::metadata(path), self.shared.root.stat()) {
            (Ok(m), Ok(st)) => (m.dev(), m.ino()) == (st.dev(), st.ino()),
            _ => false,
        }
    }

    /// The current snapshot (an `Arc` clone under a read lock).
    pub fn snapshot(&self) -> Arc<Catalog> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Report of the open or latest rescan.
    pub fn last_report(&self) -> RescanReport {
        *lock(&self.report)
    }

    /// Whole-folder scans done so far, `open`'s included (a live catalog needs them only on
    /// SIGHUP, `--watch`, or an event queue overflow).
    pub fn full_scans(&self) -> u64 {
        self.full_scans.load(AtomicOrdering::Relaxed)
    }

    fn entry(&self, c: Candidate, stamp: FileStamp, xxh64: u64, sha256: [u8; 32]) -> Entry {
        Entry {
            name: c.name,
            path: c.path,
            size: stamp.size,
            stamp,
            xxh64,
            sha256,
            shared: Arc::clone(&self.shared),
        }
    }

    /// Re-stat everything, re-hash only changed/new files, publish what changed (only if
    /// anything did; generation increases), record it in the index journal, wake waiters.
    /// Serialised with other scans and the live follower (two scans never interleave). Never
    /// holds the publish lock while hashing, so uploads go on during a long scan.
    pub fn rescan(&self) -> Result<RescanReport, CatalogError> {
        self.scan_now(false)
    }

    fn scan_now(&self, first: bool) -> Result<RescanReport, CatalogError> {
        let mut log = lock(&self.scanning);
        let started = Instant::now();
        self.full_scans.fetch_add(1, AtomicOrdering::Relaxed);
        let listing = scan::list(&self.shared.scan_root()).map_err(io_err(&self.root))?;
        // Everything is looked at now, so earlier drift reports are answered.
        drop(self.shared.drift.take());

        let mut skipped = listing.skipped.len();
        let mut still_skipped = HashSet::with_capacity(listing.skipped.len());
        for (name, reason) in listing.skipped {
            self.log_skip(&mut log, &name, reason);
            still_skipped.insert((name, reason));
        }

        let old = self.snapshot();
        let mut entries = Vec::with_capacity(listing.files.len());
        let mut to_hash = Vec::new();
        let mut reused = 0;
        {
            let st = lock(&self.state);
            for c in listing.files {
                if let Some(e) = old.by_disk_name(&c.disk_name) {
                    if e.stamp == c.stamp {
                        entries.push(Arc::clone(e));
                        reused += 1;
                        continue;
                    }
                }
                if let Some(r) = st.saved.get(&c.disk_name) {
                    if r.stamp == c.stamp {
                        let r = *r;
                        entries.push(Arc::new(self.entry(c, r.stamp, r.xxh64, r.sha256)));
                        reused += 1;
                        continue;
                    }
                }
                to_hash.push(c);
            }
        }

        let cands: Vec<&Candidate> = to_hash.iter().collect();
        let largest = to_hash.iter().map(|c| c.stamp.size).max().unwrap_or(0);
        let results = scan::hash_files(&self.shared.scan_root(), &cands, largest);
        drop(cands);
        let mut hashed = 0;
        for (c, r) in to_hash.into_iter().zip(results) {
            match r {
                Ok(h) => {
                    entries.push(Arc::new(self.entry(c, h.stamp, h.xxh64, h.sha256)));
                    hashed += 1;
                }
                // Not an exclusion: the next rescan tries again, so log it every time.
                Err(e) => {
                    eprintln!("catalog: skipping {}: {e}", c.disk_name.to_string_lossy());
                    skipped += 1;
                }
            }
        }
        // Forget logged exclusions of names that went away, so memory stays bounded and a name
        // that comes back is logged again.
        log.logged.retain(|k| still_skipped.contains(k));

        let mut changed = first;
        let mut st = if first {
            drop(old);
            // Nobody else holds the handle yet: build the first snapshot whole, even if empty.
            let mut st = lock(&self.state);
            st.inodes.clear();
            st.more_inodes.clear();
            for e in &entries {
                st.link(e);
            }
            self.swap(Catalog::from_entries(1, entries));
            st
        } else {
            let mut changes = Vec::new();
            let present: HashSet<&OsStr> = entries.iter().map(|e| e.disk_name()).collect();
            for e in &entries {
                let prev = old.by_disk_name(e.disk_name());
                if !same(prev, Some(e)) {
                    changes.push(Change {
                        name: e.disk_name().to_owned(),
                        expected: prev.cloned(),
                        new: Some(Arc::clone(e)),
                    });
                }
            }
            for e in old.entries() {
                if !present.contains(e.disk_name()) {
                    changes.push(Change {
                        name: e.disk_name().to_owned(),
                        expected: Some(Arc::clone(e)),
                        new: None,
                    });
                }
            }
            drop(present);
            drop(entries);
            drop(old);
            let mut st = lock(&self.state);
            let (applied, _lost) = self.publish(&mut st, changes, false);
            changed = applied > 0;
            st
        };
        // The index must hold exactly the snapshot's records (it may also hold records of files
        // removed while no ferry ran, or miss some after a failed write).
        let snap = self.snapshot();
        let mut ops = Vec::new();
        for e in snap.entries() {
            let rec = e.record();
            if st.saved.get(e.disk_name()) != Some(&rec) {
                ops.push(JournalOp::Put(e.disk_name().to_owned(), rec));
            }
        }
        if st.saved.len() + ops.len() > snap.len() {
            for name in st.saved.keys() {
                if snap.by_disk_name(name).is_none() {
                    ops.push(JournalOp::Remove(name.clone()));
                }
            }
        }
        // A clean start compacts: the index then holds everything and the journal is empty.
        self.record(&mut st, ops, first);
        let report = RescanReport {
            files: snap.len(),
            hashed,
            reused,
            skipped,
            changed,
            elapsed: started.elapsed(),
        };
        *lock(&self.report) = report;
        Ok(report)
    }

    fn log_skip(&self, log: &mut ScanLog, name: &OsStr, reason: SkipReason) {
        if log.logged.insert((name.to_owned(), reason)) || self.opts.verbose {
            eprintln!("catalog: skipping {}: {reason}", name.to_string_lossy());
        }
    }

    /// Publishes the changes whose `expected` entry is still current, as one new snapshot
    /// (none if nothing applies), and records them in the index journal. Returns how many
    /// applied and the changes that lost a race (their name changed since they were made).
    fn publish(
        &self,
        st: &mut PublishState,
        changes: Vec<Change>,
        compact: bool,
    ) -> (usize, Vec<Change>) {
        let cur = self.snapshot();
        let mut lost = Vec::new();
        let mut apply = Vec::with_capacity(changes.len());
        let mut touched = HashSet::with_capacity(changes.len());
        for c in changes {
            let actual = cur.by_disk_name(&c.name);
            if !same(actual, c.expected.as_ref()) || !touched.insert(c.name.clone()) {
                lost.push(c);
                continue;
            }
            if c.expected.is_none() && c.new.is_none() {
                continue;
            }
            apply.push(c);
        }
        if apply.is_empty() {
            return (0, lost);
        }
        let mut ops = Vec::with_capacity(apply.len());
        let next = if apply.len() > REBUILD_MIN_CHANGES.max(cur.len() / 8) {
            let mut keep: HashMap<&[u8], Arc<Entry>> = cur
                .entries()
                .map(|e| (e.disk_name_bytes(), Arc::clone(e)))
                .collect();
            for c in &apply {
                keep.remove(c.name.as_bytes());
            }
            let mut entries: Vec<Arc<Entry>> = keep.into_values().collect();
            entries.extend(apply.iter().filter_map(|c| c.new.clone()));
            Catalog::from_entries(cur.generation + 1, entries)
        } else {
            let mut next = cur.next_generation();
            for c in &apply {
                if let Some(old) = &c.expected {
                    next.remove(old);
                }
                if let Some(new) = &c.new {
                    next.insert(new);
                }
            }
            next
        };
        for c in &apply {
            if let Some(old) = &c.expected {
                st.unlink(old);
            }
            match &c.new {
                Some(new) => {
                    st.link(new);
                    ops.push(JournalOp::Put(c.name.clone(), new.record()));
                }
                None => ops.push(JournalOp::Remove(c.name.clone())),
            }
            if self.opts.verbose {
                match &c.new {
                    Some(new) => eprintln!(
                        "catalog: published {} ({} bytes, sha256 {})",
                        c.name.to_string_lossy(),
                        new.size,
                        new.sha256_hex()
                    ),
                    None => eprintln!("catalog: retired {}", c.name.to_string_lossy()),
                }
            }
        }
        let applied = apply.len();
        drop(cur);
        self.swap(next);
        self.record(st, ops, compact);
        (applied, lost)
    }

    /// Applies `ops` to the saved index and appends them to the journal, or rewrites the whole
    /// index (and empties the journal) when `compact` is asked, the journal has grown past half
    /// the index, or earlier writes failed.
    fn record(&self, st: &mut PublishState, ops: Vec<JournalOp>, compact: bool) {
        let n = ops.len() as u64;
        let appended = match &mut st.journal {
            Some(j) if !compact && n > 0 => match j.append(&ops) {
                Ok(()) => true,
                Err(e) => {
                    self.log_save_error(&mut st.last_save_error, "journal", &e);
                    false
                }
            },
            _ => false,
        };
        if !appended {
            st.unsaved += n;
        }
        for op in ops {
            op.apply(&mut st.saved);
        }
        let journal_records = st.journal.as_ref().map_or(0, Journal::records);
        let threshold = COMPACT_MIN_RECORDS.max(st.saved.len() as u64 / 2);
        let due = st.needs_save
            || st.unsaved > threshold
            || journal_records + st.unsaved > threshold
            || (compact && (journal_records > 0 || st.unsaved > 0));
        if !due {
            return;
        }
        match index::save(&self.state_fd, &st.saved) {
            Ok(()) => {
                st.needs_save = false;
                st.unsaved = 0;
                st.last_save_error = None;
                if let Some(j) = &mut st.journal {
                    if let Err(e) = j.reset() {
                        // The journal's records are all in the index now, so replaying them
                        // changes nothing; only the file's growth is at stake.
                        self.log_save_error(&mut st.last_save_error, "journal", &e);
                    }
                }
            }
            Err(e) => {
                st.needs_save = true;
                self.log_save_error(&mut st.last_save_error, index::INDEX_FILE, &e);
            }
        }
    }

    fn log_save_error(&self, last: &mut Option<String>, file: &str, e: &io::Error) {
        let msg = e.to_string();
        if last.as_deref() != Some(msg.as_str()) {
            eprintln!(
                "catalog: cannot save {}: {msg}",
                self.state_dir.join(file).display()
            );
        }
        *last = Some(msg);
    }

    /// Swaps in a new snapshot and wakes `wait_for_change` callers.
    fn swap(&self, catalog: Catalog) {
        let generation = catalog.generation;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(catalog);
        *lock(&self.generation) = generation;
        self.generation_changed.notify_all();
    }

    /// Blocks until the generation differs from `seen` or `timeout` passes; returns the current snapshot.
    pub fn wait_for_change(&self, seen: u64, timeout: Duration) -> Arc<Catalog> {
        // A timeout too large to add to now (Duration::MAX) means "no deadline".
        let deadline = Instant::now().checked_add(timeout);
        let mut generation = lock(&self.generation);
        while *generation == seen {
            let wait = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => break,
                },
                None => Duration::from_secs(3600),
            };
            generation = self
                .generation_changed
                .wait_timeout(generation, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        drop(generation);
        self.snapshot()
    }

    /// Called by ingest after it renamed a verified file into the root: adds/updates that one
    /// file (hashing it) and publishes a new snapshot, in O(log n) plus one journal record.
    /// Returns its Entry.
    ///
    /// `path` must name a file directly in the root (its folder must be the root's inode);
    /// the name is then looked at beneath the root's descriptor like any other. Excluded names
    /// give [`CatalogError::Excluded`].
    pub fn add_file(&self, path: &Path) -> Result<Arc<Entry>, CatalogError> {
        self.add_file_inner(path, None, None)
    }

    /// [`add_file`](Self::add_file) for a file whose hashes the caller computed from the very
    /// bytes it wrote (ingest does, while receiving them): reading the file back to hash it
    /// again would double the CPU cost of every upload. The stamp is taken now, after the
    /// rename that published the file.
    pub fn add_ingested_file(
        &self,
        path: &Path,
        xxh64: u64,
        sha256: [u8; 32],
    ) -> Result<Arc<Entry>, CatalogError> {
        self.add_file_inner(path, Some((xxh64, sha256)), None)
    }

    /// [`add_ingested_file`](Self::add_ingested_file) for the very inode (device, inode) the
    /// caller published: if the name now holds another file (someone who can write the folder
    /// renamed one over it), the hashes are not registered for it and
    /// [`CatalogError::Changed`] is returned.
    pub fn add_published_file(
        &self,
        path: &Path,
        inode: (u64, u64),
        xxh64: u64,
        sha256: [u8; 32],
    ) -> Result<Arc<Entry>, CatalogError> {
        let (dev, ino) = inode;
        self.add_file_inner(
            path,
            Some((xxh64, sha256)),
            Some(Same {
                dev,
                ino,
                size_mtime: None,
            }),
        )
    }

    /// [`add_ingested_file`](Self::add_ingested_file) for a file that must still be the one
    /// the hashes were taken of: the same inode, size and modification time as `was` (its
    /// change time may differ: a rename or a new link changes it). A file written in place
    /// since, or another file renamed over the name, is [`CatalogError::Changed`] and gets no
    /// hashes. (`ferry sync` records the files it placed and the local copies it linked so.)
    pub fn add_unchanged_file(
        &self,
        path: &Path,
        was: &FileStamp,
        xxh64: u64,
        sha256: [u8; 32],
    ) -> Result<Arc<Entry>, CatalogError> {
        self.add_file_inner(
            path,
            Some((xxh64, sha256)),
            Some(Same {
                dev: was.dev,
                ino: was.ino,
                size_mtime: Some((was.size, was.mtime_ns)),
            }),
        )
    }

    fn add_file_inner(
        &self,
        path: &Path,
        known: Option<(u64, [u8; 32])>,
        same: Option<Same>,
    ) -> Result<Arc<Entry>, CatalogError> {
        let not_in_root = || CatalogError::NotInRoot {
            path: path.to_owned(),
        };
        let disk_name = path.file_name().ok_or_else(not_in_root)?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let parent_meta = std::fs::metadata(parent).map_err(io_err(parent))?;
        let root_st = self.shared.root.stat().map_err(io_err(&self.root))?;
        if (parent_meta.dev(), parent_meta.ino()) != (root_st.dev(), root_st.ino()) {
            return Err(not_in_root());
        }
        let c = scan::classify(&self.shared.scan_root(), disk_name).map_err(|reason| {
            CatalogError::Excluded {
                path: path.to_owned(),
                reason,
            }
        })?;
        if same.is_some_and(|w| !w.matches(&c.stamp)) {
            return Err(CatalogError::Changed {
                path: path.to_owned(),
            });
        }
        if let Some(e) = self.snapshot().by_disk_name(disk_name) {
            if e.stamp == c.stamp {
                return Ok(Arc::clone(e));
            }
        }
        let h: Hashes = match known {
            Some((xxh64, sha256)) => Hashes {
                stamp: c.stamp,
                xxh64,
                sha256,
            },
            None => match scan::hash_file(
                &self.shared.scan_root(),
                &c,
                &mut vec![0u8; c.stamp.size.clamp(4096, 1 << 20) as usize],
            ) {
                Ok(h) => h,
                Err(HashError::Changed) => {
                    return Err(CatalogError::Changed {
                        path: path.to_owned(),
                    })
                }
                Err(HashError::Io(e)) => return Err(io_err(path)(e)),
            },
        };
        let entry = Arc::new(self.entry(c, h.stamp, h.xxh64, h.sha256));
        let mut st = lock(&self.state);
        // Whatever is current for the name now is replaced: this file was just put there.
        let current = self.snapshot().by_disk_name(disk_name).cloned();
        if let Some(cur) = &current {
            if cur.stamp == entry.stamp {
                return Ok(Arc::clone(cur));
            }
        }
        let change = Change {
            name: disk_name.to_owned(),
            expected: current,
            new: Some(Arc::clone(&entry)),
        };
        self.publish(&mut st, vec![change], false);
        Ok(entry)
    }

    /// Looks at each named file as it is now and publishes what changed, as one snapshot: a
    /// name gone or excluded loses its entry at once; a new or changed file is published once
    /// two looks a settle time apart agree on its stamp (`Check::seen`), then hashed (outside
    /// the publish lock, once per distinct stamp, so hard links cost one read). A metadata-
    /// only change (only the ctime moved) is re-hashed like any other: the same bytes keep
    /// their ids under the new stamp, other bytes get new ids.
    fn check(&self, checks: Vec<Check>) -> CheckOutcome {
        let mut log = lock(&self.scanning);
        let snap = self.snapshot();
        let mut out = CheckOutcome::default();
        let mut changes = Vec::new();
        let mut to_hash: Vec<(Candidate, Option<Arc<Entry>>)> = Vec::new();
        let mut moved_inodes = HashSet::new();
        for ch in checks {
            let current = snap.by_disk_name(&ch.name).cloned();
            if ch.retire_only {
                if let Some(cur) = current {
                    moved_inodes.insert(cur.inode());
                    changes.push(Change {
                        name: ch.name,
                        expected: Some(cur),
                        new: None,
                    });
                }
                continue;
            }
            match scan::classify(&self.shared.scan_root(), &ch.name) {
                Err(reason) => {
                    if !matches!(reason, SkipReason::Unstatable(io::ErrorKind::NotFound)) {
                        self.log_skip(&mut log, &ch.name, reason);
                    }
                    if let Some(cur) = current {
                        moved_inodes.insert(cur.inode());
                        changes.push(Change {
                            name: ch.name,
                            expected: Some(cur),
                            new: None,
                        });
                    }
                }
                Ok(c) => {
                    if current.as_ref().is_some_and(|cur| cur.stamp == c.stamp) {
                        continue;
                    }
                    if ch.seen == Some(c.stamp) {
                        to_hash.push((c, current));
                    } else {
                        if ch.seen.is_none() {
                            moved_inodes.insert((c.stamp.dev, c.stamp.ino));
                            if let Some(cur) = &current {
                                moved_inodes.insert(cur.inode());
                            }
                        }
                        out.later.push((ch.name, Some(c.stamp)));
                    }
                }
            }
        }
        drop(snap);

        // One read per distinct stamp: names of one inode share their hashes.
        let mut first_of: HashMap<FileStamp, usize> = HashMap::new();
        let mut cands: Vec<&Candidate> = Vec::new();
        for (c, _) in &to_hash {
            first_of.entry(c.stamp).or_insert_with(|| {
                cands.push(c);
                cands.len() - 1
            });
        }
        let largest = to_hash.iter().map(|(c, _)| c.stamp.size).max().unwrap_or(0);
        let results = scan::hash_files(&self.shared.scan_root(), &cands, largest);
        drop(cands);
        let by_stamp: HashMap<FileStamp, &Result<Hashes, HashError>> = first_of
            .iter()
            .map(|(stamp, &i)| (*stamp, &results[i]))
            .collect();
        for (c, current) in to_hash {
            match by_stamp.get(&c.stamp) {
                Some(Ok(h)) if h.stamp == c.stamp => {
                    let name = c.disk_name.clone();
                    let entry = self.entry(c, h.stamp, h.xxh64, h.sha256);
                    changes.push(Change {
                        name,
                        expected: current,
                        new: Some(Arc::new(entry)),
                    });
                }
                Some(Err(HashError::Io(e))) => {
                    eprintln!("catalog: skipping {}: {e}", c.disk_name.to_string_lossy());
                    if let Some(cur) = current {
                        changes.push(Change {
                            name: c.disk_name,
                            expected: Some(cur),
                            new: None,
                        });
                    }
                }
                // Changed while hashing: start over.
                _ => out.later.push((c.disk_name, None)),
            }
        }
        drop(results);

        let mut st = lock(&self.state);
        let (_, lost) = self.publish(&mut st, changes, false);
        out.later.extend(lost.into_iter().map(|c| (c.name, None)));
        let mut siblings = HashSet::new();
        for inode in moved_inodes {
            for name in st.names_of(inode) {
                siblings.insert(name.to_owned());
            }
        }
        drop(st);
        drop(log);
        let pending: HashSet<&OsString> = out.later.iter().map(|(n, _)| n).collect();
        let now: Vec<OsString> = siblings
            .into_iter()
            .filter(|n| !pending.contains(n))
            .collect();
        out.now = now;
        out
    }
}

pub use live::WatcherGuard;

#[cfg(test)]
mod test_entries;
#[cfg(test)]
mod tests;
