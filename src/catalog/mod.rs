//! The shared catalog: one served folder, scanned, hashed once and memory-mapped, seen by all
//! five protocols as immutable snapshots.
//!
//! [`CatalogHandle::open`] creates the root (and its `.ferry/` state folder) if missing, loads
//! the persistent index, lists the regular files directly in the root, hashes only files whose
//! stamp (dev, ino, size, mtime, ctime) is not in the index, saves the index and publishes the
//! first [`Catalog`]. [`CatalogHandle::rescan`] repeats that and swaps in a new snapshot only if
//! something changed; readers keep whatever `Arc<Catalog>` they hold, so a rescan never stalls
//! a transfer and a transfer never stalls a rescan.
//!
//! ```text
//!   read_dir(root) --classify--> candidates --stamp in index/snapshot?--yes--> reuse hashes
//!                                                   |no
//!                                                   v
//!                          hash on N threads (1 MiB read(2), xxh64 + sha256 in one pass)
//!                                                   |
//!          sort by (NFC name bytes, xxh64) --> Catalog { generation + 1 } --> RwLock swap
//!                                                                           --> Condvar wake
//! ```
//!
//! The catalog holds every regular file; names starting with `.`, non-UTF-8 names, non-regular
//! files and symlinks resolving outside the root are excluded and logged once to stderr.
//! Protocol-specific filtering (extensions, 4 GiB limits, name lengths) is out of scope here.
//! Serving bytes goes through [`Entry::open`], which maps the file once per entry
//! ([`mapped::MappedFile`], the crate's one `unsafe` module) and refuses a file that no longer
//! matches the stamp its hashes were taken from.

mod index;
pub mod mapped;
mod scan;

pub use mapped::{FileStamp, MappedFile};
pub use scan::SkipReason;

use index::{Index, IndexRecord};
use scan::{Candidate, HashError, Hashes, STATE_DIR};
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How the catalog behaves; plain data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CatalogOptions {
    /// Log every excluded name on every scan (default `false`: each exclusion is logged the
    /// first time it is seen).
    pub verbose: bool,
}

/// One served file: its identity, its hashes, and a lazily opened mapping.
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
    map: OnceLock<Arc<MappedFile>>,
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
            .field("mapped", &self.map.get().is_some())
            .finish()
    }
}

impl Entry {
    fn new(c: Candidate, stamp: FileStamp, xxh64: u64, sha256: [u8; 32]) -> Entry {
        Entry {
            name: c.name,
            path: c.path,
            size: stamp.size,
            stamp,
            xxh64,
            sha256,
            map: OnceLock::new(),
        }
    }

    /// The on-disk name (the index key).
    fn disk_name(&self) -> &std::ffi::OsStr {
        self.path.file_name().unwrap_or_default()
    }

    /// The on-disk name, byte-exact (`name` is its NFC form). Unique within a snapshot, unlike
    /// `name`: two spellings of one NFC name are two files. Protocols that address files by an
    /// exact path (TEJ) use this.
    pub fn file_name(&self) -> &str {
        // The catalog keeps only UTF-8 names.
        self.disk_name().to_str().unwrap_or_default()
    }

    /// Opens and maps the file once per Entry and caches it (so repeated GETs cost nothing);
    /// Err(io::ErrorKind::Other "changed") if the file now on disk no longer matches `stamp`
    /// (then the entry must not be served). The cached mapping keeps the inode it opened, so a file
    /// replaced by rename keeps serving its old bytes until a rescan makes a new Entry.
    ///
    /// A cached mapping costs one `fstat` per call: an in-place rewrite or truncation of the
    /// mapped inode is reported as "changed" too, so new bytes never go out under an old id.
    pub fn open(&self) -> io::Result<Arc<MappedFile>> {
        if let Some(m) = self.map.get() {
            return if m.is_unchanged() {
                Ok(Arc::clone(m))
            } else {
                Err(changed_error())
            };
        }
        let m = MappedFile::open(&self.path)?;
        if m.stamp() != self.stamp {
            return Err(changed_error());
        }
        let m = Arc::new(m);
        // Two threads may race to open; both mappings are valid and one wins the cache.
        Ok(Arc::clone(self.map.get_or_init(|| m)))
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
}

fn changed_error() -> io::Error {
    io::Error::other("changed")
}

/// An immutable snapshot of the served folder.
#[derive(Debug)]
pub struct Catalog {
    generation: u64,
    entries: Vec<Arc<Entry>>,
    by_xxh64: HashMap<u64, usize>,
    by_sha256: HashMap<[u8; 32], usize>,
    by_name: HashMap<String, usize>,
}

impl Catalog {
    /// Sorts `entries` into catalog order and indexes them.
    fn new(generation: u64, mut entries: Vec<Arc<Entry>>) -> Catalog {
        entries.sort_by(|a, b| {
            (a.name.as_bytes(), a.xxh64, a.path.as_os_str().as_bytes()).cmp(&(
                b.name.as_bytes(),
                b.xxh64,
                b.path.as_os_str().as_bytes(),
            ))
        });
        let mut by_xxh64 = HashMap::with_capacity(entries.len());
        let mut by_sha256 = HashMap::with_capacity(entries.len());
        let mut by_name = HashMap::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            by_xxh64.entry(e.xxh64).or_insert(i);
            by_sha256.entry(e.sha256).or_insert(i);
            by_name.entry(e.name.clone()).or_insert(i);
        }
        Catalog {
            generation,
            entries,
            by_xxh64,
            by_sha256,
            by_name,
        }
    }

    /// Increases with every swap.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Entries sorted by NFC name bytes ascending, ties by xxh64 ascending.
    pub fn entries(&self) -> &[Arc<Entry>] {
        &self.entries
    }

    /// The first entry in catalog order with this xxHash64.
    pub fn by_xxh64(&self, id: u64) -> Option<&Arc<Entry>> {
        self.by_xxh64.get(&id).map(|&i| &self.entries[i])
    }

    /// The first entry in catalog order with this SHA-256.
    pub fn by_sha256(&self, id: &[u8; 32]) -> Option<&Arc<Entry>> {
        self.by_sha256.get(id).map(|&i| &self.entries[i])
    }

    /// The first entry in catalog order with this NFC name.
    pub fn by_name(&self, nfc_name: &str) -> Option<&Arc<Entry>> {
        self.by_name.get(nfc_name).map(|&i| &self.entries[i])
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
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

/// What only the (serialised) scanners touch.
struct ScanState {
    /// Records as last saved to (or loaded from) the index file.
    saved: Index,
    /// The index file on disk differs from `saved` (a save failed, or it was corrupt).
    needs_save: bool,
    /// Exclusions already logged, pruned to names still present.
    logged: HashSet<(OsString, SkipReason)>,
    /// Last index save error logged, to avoid repeating it on every rescan.
    last_save_error: Option<String>,
}

/// The live catalog, shared as `Arc<CatalogHandle>`.
pub struct CatalogHandle {
    root: PathBuf,
    canon_root: PathBuf,
    state_dir: PathBuf,
    opts: CatalogOptions,
    scan: Mutex<ScanState>,
    current: RwLock<Arc<Catalog>>,
    generation: Mutex<u64>,
    generation_changed: Condvar,
    report: Mutex<RescanReport>,
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

impl CatalogHandle {
    /// Creates root and root/.ferry if missing, loads the index, scans, hashes what changed, saves
    /// the index, returns the handle.
    pub fn open(root: &Path, opts: CatalogOptions) -> Result<Arc<CatalogHandle>, CatalogError> {
        let state_dir = root.join(STATE_DIR);
        std::fs::create_dir_all(&state_dir).map_err(io_err(&state_dir))?;
        let canon_root = std::fs::canonicalize(root).map_err(io_err(root))?;
        let (saved, needs_save) = match index::load(&state_dir) {
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
        let handle = Arc::new(CatalogHandle {
            root: root.to_owned(),
            canon_root,
            state_dir,
            opts,
            scan: Mutex::new(ScanState {
                saved,
                needs_save,
                logged: HashSet::new(),
                last_save_error: None,
            }),
            current: RwLock::new(Arc::new(Catalog::new(0, Vec::new()))),
            generation: Mutex::new(0),
            generation_changed: Condvar::new(),
            report: Mutex::new(RescanReport::default()),
        });
        handle.scan_now(true)?;
        Ok(handle)
    }

    /// The root as given to `open`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// root/.ferry
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir.clone()
    }

    /// The current snapshot (an `Arc` clone under a read lock).
    pub fn snapshot(&self) -> Arc<Catalog> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Report of the open or latest rescan.
    pub fn last_report(&self) -> RescanReport {
        *lock(&self.report)
    }

    /// Re-stat everything, re-hash only changed/new files, build a new Catalog and swap it in
    /// atomically (only if anything changed; generation increases), save the index, wake waiters.
    /// Serialised by a mutex (two concurrent rescans never interleave). Never holds the snapshot
    /// lock while hashing.
    pub fn rescan(&self) -> Result<RescanReport, CatalogError> {
        self.scan_now(false)
    }

    fn scan_now(&self, force_swap: bool) -> Result<RescanReport, CatalogError> {
        let mut st = lock(&self.scan);
        let started = Instant::now();
        let listing = scan::list(&self.root, &self.canon_root).map_err(io_err(&self.root))?;

        let mut skipped = listing.skipped.len();
        let mut still_skipped = HashSet::with_capacity(listing.skipped.len());
        for (name, reason) in listing.skipped {
            self.log_skip(&mut st, &name, reason);
            still_skipped.insert((name, reason));
        }

        let old = self.snapshot();
        let old_by_name: HashMap<&std::ffi::OsStr, &Arc<Entry>> =
            old.entries().iter().map(|e| (e.disk_name(), e)).collect();
        let mut entries = Vec::with_capacity(listing.files.len());
        let mut to_hash = Vec::new();
        let mut reused = 0;
        for c in listing.files {
            if let Some(e) = old_by_name.get(c.disk_name.as_os_str()) {
                if e.stamp == c.stamp {
                    entries.push(Arc::clone(e));
                    reused += 1;
                    continue;
                }
            }
            if let Some(r) = st.saved.get(&c.disk_name) {
                if r.stamp == c.stamp {
                    let r = *r;
                    entries.push(Arc::new(Entry::new(c, r.stamp, r.xxh64, r.sha256)));
                    reused += 1;
                    continue;
                }
            }
            to_hash.push(c);
        }

        let paths: Vec<&Path> = to_hash.iter().map(|c| c.path.as_path()).collect();
        let results = scan::hash_files(&paths);
        let mut hashed = 0;
        for (c, r) in to_hash.into_iter().zip(results) {
            match r {
                Ok(h) => {
                    entries.push(Arc::new(Entry::new(c, h.stamp, h.xxh64, h.sha256)));
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
        st.logged.retain(|k| still_skipped.contains(k));

        let changed = force_swap
            || entries.len() != old.len()
            || entries.iter().any(|e| {
                old_by_name
                    .get(e.disk_name())
                    .is_none_or(|o| !Arc::ptr_eq(o, e))
            });
        drop(old_by_name);
        let files = entries.len();
        let index: Index = entries
            .iter()
            .map(|e| (e.disk_name().to_owned(), e.record()))
            .collect();
        if changed {
            self.publish(old.generation() + 1, entries);
        }
        drop(old);
        if st.needs_save || index != st.saved {
            st.saved = index;
            self.save_index(&mut st);
        }
        let report = RescanReport {
            files,
            hashed,
            reused,
            skipped,
            changed,
            elapsed: started.elapsed(),
        };
        *lock(&self.report) = report;
        Ok(report)
    }

    fn log_skip(&self, st: &mut ScanState, name: &std::ffi::OsStr, reason: SkipReason) {
        if st.logged.insert((name.to_owned(), reason)) || self.opts.verbose {
            eprintln!("catalog: skipping {}: {reason}", name.to_string_lossy());
        }
    }

    fn save_index(&self, st: &mut ScanState) {
        match index::save(&self.state_dir, &st.saved) {
            Ok(()) => {
                st.needs_save = false;
                st.last_save_error = None;
            }
            Err(e) => {
                st.needs_save = true;
                let msg = e.to_string();
                if st.last_save_error.as_deref() != Some(msg.as_str()) {
                    eprintln!(
                        "catalog: cannot save {}: {msg}",
                        self.state_dir.join(index::INDEX_FILE).display()
                    );
                }
                st.last_save_error = Some(msg);
            }
        }
    }

    /// Swaps in a new snapshot and wakes `wait_for_change` callers.
    fn publish(&self, generation: u64, entries: Vec<Arc<Entry>>) {
        let catalog = Arc::new(Catalog::new(generation, entries));
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = catalog;
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

    /// Called by ingest after it renamed a verified file into the root: adds/updates that one file
    /// (hashes it unless `known_sha256` is given AND you still compute xxh64 — compute both, it is
    /// cheap enough) and swaps in a new snapshot. Returns its Entry.
    ///
    /// `path` must name a file directly in the root (its folder is compared after
    /// canonicalisation); excluded names give [`CatalogError::Excluded`].
    pub fn add_file(&self, path: &Path) -> Result<Arc<Entry>, CatalogError> {
        self.add_file_inner(path, None)
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
        self.add_file_inner(path, Some((xxh64, sha256)))
    }

    fn add_file_inner(
        &self,
        path: &Path,
        known: Option<(u64, [u8; 32])>,
    ) -> Result<Arc<Entry>, CatalogError> {
        let not_in_root = || CatalogError::NotInRoot {
            path: path.to_owned(),
        };
        let disk_name = path.file_name().ok_or_else(not_in_root)?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let canon_parent = std::fs::canonicalize(parent).map_err(io_err(parent))?;
        if canon_parent != self.canon_root {
            return Err(not_in_root());
        }
        let mut st = lock(&self.scan);
        let c = scan::classify(&self.root, &self.canon_root, disk_name).map_err(|reason| {
            CatalogError::Excluded {
                path: path.to_owned(),
                reason,
            }
        })?;
        let old = self.snapshot();
        if let Some(e) = old
            .entries()
            .iter()
            .find(|e| e.disk_name() == disk_name && e.stamp == c.stamp)
        {
            return Ok(Arc::clone(e));
        }
        let h: Hashes = match known {
            Some((xxh64, sha256)) => Hashes {
                stamp: c.stamp,
                xxh64,
                sha256,
            },
            None => match scan::hash_file(&c.path, &mut vec![0u8; 1 << 20]) {
                Ok(h) => h,
                Err(HashError::Changed) => {
                    return Err(CatalogError::Changed {
                        path: path.to_owned(),
                    })
                }
                Err(HashError::Io(e)) => return Err(io_err(path)(e)),
            },
        };
        let entry = Arc::new(Entry::new(c, h.stamp, h.xxh64, h.sha256));
        let mut entries: Vec<Arc<Entry>> = old
            .entries()
            .iter()
            .filter(|e| e.disk_name() != disk_name)
            .cloned()
            .collect();
        entries.push(Arc::clone(&entry));
        self.publish(old.generation() + 1, entries);
        st.saved.insert(disk_name.to_owned(), entry.record());
        self.save_index(&mut st);
        Ok(entry)
    }

    /// Spawns a thread that calls rescan() every `interval` until the returned guard is dropped
    /// (dropping it stops and joins the thread promptly, within ~100 ms).
    ///
    /// "Promptly" holds between rescans; a drop during a rescan waits for that rescan to end.
    /// The thread holds only a weak reference, so it also ends when the handle is dropped.
    pub fn spawn_watcher(self: &Arc<Self>, interval: Duration) -> WatcherGuard {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let weak: Weak<CatalogHandle> = Arc::downgrade(self);
        let thread = std::thread::Builder::new()
            .name("ferry-catalog-watch".into())
            .spawn(move || {
                let mut last_error: Option<String> = None;
                loop {
                    match stopped.recv_timeout(interval) {
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    let Some(handle) = weak.upgrade() else { return };
                    match handle.rescan() {
                        Ok(_) => last_error = None,
                        Err(e) => {
                            let msg = e.to_string();
                            if last_error.as_deref() != Some(msg.as_str()) {
                                eprintln!("{msg}");
                            }
                            last_error = Some(msg);
                        }
                    }
                }
            });
        match thread {
            Ok(t) => WatcherGuard {
                stop: Some(stop),
                thread: Some(t),
            },
            Err(e) => {
                eprintln!("catalog: cannot start the watcher thread: {e}");
                WatcherGuard {
                    stop: None,
                    thread: None,
                }
            }
        }
    }
}

/// Keeps the periodic rescan thread alive; dropping it stops and joins the thread.
#[derive(Debug)]
pub struct WatcherGuard {
    stop: Option<crossbeam_channel::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl WatcherGuard {
    /// Whether a watcher thread is running (false only if spawning it failed).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests;
