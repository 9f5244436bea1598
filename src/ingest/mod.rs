//! Ingest: the one way bytes from the network become a visible file in a folder.
//!
//! Every download and upload path (JTP's client, TEJ/FastDP/filestorage uploads, CJP2P downloads)
//! goes through here, so the safety rules live in one place:
//! - data lands in a temporary file that no one mistakes for a finished file (a dot-name
//!   `.ferry-<tag>-<pid>-<counter>.part` created with `O_EXCL`, or `<key>.part` in the hidden
//!   working folder);
//! - it is verified (SHA-256 or xxHash64) and fsynced before it gets a final name;
//! - publishing never replaces a file: `renameat2(RENAME_NOREPLACE)`, or `link` + `unlink` where
//!   that is unsupported; identical content already there is reused, different content keeps its
//!   name and the new file gets a tagged one ([`crate::names::with_tag`]); the folder is fsynced;
//! - a server registers what it published with its catalog in the same step ([`Publisher`]),
//!   with the hashes computed while the bytes arrived.
//!
//! Three shapes of transfer:
//!
//! ```text
//! streaming (TEJ, JTP client)          resumable, one owner (CJP2P)
//!
//! begin_stream --write_all*--> commit   begin_resumable --write_block*/flush*--> complete
//!      |                         |           ^  (reopen after a crash: missing() = the rest)  |
//!      +--abort / drop--> gone   |           +------------- clear() <-- Mismatch <-- commit --+
//!                                v                                                  |
//!                        Created | AlreadyPresent | Renamed  <-----------------------+
//!
//! shared (FastDP, filestorage): several connections, one part, one publish
//!
//!   TransferRegistry::attach(id, spec) --open (new, or resumed from the bitmap) / join-->
//!     Open: write_blocks / claim+write+finish from any connection --> written
//!           sync() (one fdatasync for all waiting writers) --> durable --> acknowledge
//!       |  every block written
//!       v
//!     commit --> Verifying --> Completed(publication)   seen by every attachment
//!                    |
//!                    +-------> Failed(error)            a hash mismatch deletes the part
//!   last detach: sync and close; abort or crash: exactly the durable blocks remain (resumable)
//! ```
//!
//! The resumable bitmap file (`<key>.bitmap`, shared by both resumable shapes) is a 32-byte
//! header followed by one bit per block, least significant bit first; a bit is set on disk only
//! once its block's bytes are synced:
//!
//! ```text
//! 0      8        12           16        24        32
//! | magic | version | block size | size    | blocks  | bits...
//!  "FERRYBM\0" u32 LE=1  u32 LE     u64 LE    u64 LE
//! ```
//!
//! Every file operation goes through the two folders' descriptors, opened once when the
//! [`IngestDir`] is made ([`crate::dir`]): temporaries are created `O_CREAT | O_EXCL |
//! O_NOFOLLOW`, resumable parts and bitmaps are reopened `O_NOFOLLOW` and checked (a regular
//! file of ours with one link), publishing is `renameat2` between the two descriptors, and a
//! name already in the destination is compared through an `O_NOFOLLOW | O_NONBLOCK` open.
//! Working folders are private (ours, writable by nobody else), or refused with a message. So
//! a local user who can write into a served or output folder can neither make ferry write
//! through a planted link nor swap the working folder for another.
//!
//! Out of scope: choosing names from the wire (see [`crate::names`]), protocol state kept beside
//! a transfer (FastDP's `.state`, filestorage's journal), and deciding *which* blocks to fetch
//! (the protocol machines do that).

pub mod ledger;
mod part;
mod prefix_hash;
mod publish;
mod publisher;
mod resumable;
mod stream;
mod transfer;

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};

use crate::catalog::{CatalogHandle, FileStamp};
use crate::dir::Dir;
use prefix_hash::HashState;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

pub use part::Rewrite;
pub use publisher::{Listed, Publication, Publisher};
pub use resumable::Resumable;
pub use stream::StreamSink;
pub use transfer::{
    Attachment, BlockWriter, Claim, Transfer, TransferError, TransferRegistry, TransferSpec,
    TransferState, Wrote,
};

/// Prefix of streaming temporaries; a served folder's scanner must skip dot-files anyway.
const TEMP_PREFIX: &str = ".ferry-";
/// Suffix of streaming temporaries and resumable partials.
const PART_SUFFIX: &str = ".part";
/// Longest resumable key accepted (keeps `<key>.bitmap.new` far below `NAME_MAX`).
pub const MAX_KEY_BYTES: usize = 128;

/// What the data must hash to before it may become visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// SHA-256 of the whole file (TEJ, CJP2P, filestorage).
    Sha256([u8; 32]),
    /// xxHash64 (seed 0) of the whole file (JTP's image ids, FastDP).
    Xxh64(u64),
    /// No expectation: hashes are still computed and reported.
    Nothing,
}

/// Where a committed file ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// Full path of the final file (`dest/name`).
    pub path: PathBuf,
    /// The final name, which differs from the requested one when `outcome` is `Renamed`.
    pub name: String,
    /// None when the sink computed only xxHash64.
    pub sha256: Option<[u8; 32]>,
    pub xxh64: u64,
    pub size: u64,
    pub outcome: Outcome,
    /// Device and inode of the file ingest itself put under `path` (`Created`, `Renamed`);
    /// `None` when the bytes were already there (`AlreadyPresent`). A catalog registers the
    /// hashes above only for this very inode, whatever has been renamed over `path` since.
    pub inode: Option<(u64, u64)>,
}

/// (device, inode) of an open file.
fn inode_of(file: &fs::File) -> io::Result<(u64, u64)> {
    use std::os::fd::AsRawFd;
    let st = crate::dir::fstat(file.as_raw_fd())?;
    Ok((st.dev(), st.ino()))
}

/// How the no-clobber rule resolved the final name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The file was published under the requested name.
    Created,
    /// An identical file was already there (requested or tagged name): the temporary was dropped.
    AlreadyPresent,
    /// The name was taken by different content: saved as `with_tag(name, first 8 hex of the id)`,
    /// with `-1`, `-2`, ... appended to the tag if that was taken too (or under the next
    /// [`Collision::Numbered`] candidate when the caller asked for that policy).
    Renamed,
}

/// How a final name already taken by *different* content is resolved. Identical content is
/// always reused ([`Outcome::AlreadyPresent`]); a file is never replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Collision {
    /// jtp.md 5.2 rule 4: `with_tag(name, first 8 hex of the id)`, then the tag with `-1`, `-2`,
    /// ... `-999` appended. The id is the xxh64 for `Expect::Xxh64`, the SHA-256 otherwise.
    #[default]
    Tagged,
    /// tej.md section 5: `stem-1.ext` ... `stem-999.ext`, then `<sha256 hex>.ext`.
    Numbered,
}

/// Errors of the ingest layer.
#[derive(Debug)]
pub enum IngestError {
    /// A file-system operation failed.
    Io(io::Error),
    /// The data does not hash to what was expected (lowercase hex of both).
    Mismatch { expected: String, actual: String },
    /// The file system is full (`ENOSPC`, `EDQUOT`).
    NoSpace,
    /// The final name is not a plain basename (empty, ".", "..", contains '/' or NUL, too long).
    BadName,
    /// A resumable transfer was committed with blocks still missing.
    Incomplete { missing: u64 },
}

impl fmt::Display for IngestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IngestError::Io(e) => write!(f, "ingest: {e}"),
            IngestError::Mismatch { expected, actual } => {
                write!(
                    f,
                    "ingest: hash mismatch: expected {expected}, got {actual}"
                )
            }
            IngestError::NoSpace => f.write_str("ingest: no space left on device"),
            IngestError::BadName => f.write_str("ingest: unsafe file name"),
            IngestError::Incomplete { missing } => {
                write!(f, "ingest: {missing} blocks still missing")
            }
        }
    }
}

impl std::error::Error for IngestError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            IngestError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for IngestError {
    fn from(e: io::Error) -> Self {
        if is_no_space(&e) {
            IngestError::NoSpace
        } else {
            IngestError::Io(e)
        }
    }
}

fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || e.kind() == io::ErrorKind::StorageFull
}

/// A destination folder plus its working folder for temporaries. Cheap to clone; share freely.
#[derive(Debug, Clone)]
pub struct IngestDir {
    inner: Arc<Paths>,
    /// fsync files and the folder before and after publishing (default). A client filling an
    /// output folder may turn it off: the rename stays atomic, only a power cut can lose files.
    durable: bool,
    /// Bytes every transfer of this folder leaves free on its file system (default 0).
    disk_reserve: u64,
    /// Who this folder's transfers take space for, and the most it may hold at once (default:
    /// nobody in particular, no cap). See [`ledger`].
    owner: Option<(Arc<str>, u64)>,
}

#[derive(Debug)]
struct Paths {
    /// Paths of the two folders, for messages and [`Committed::path`].
    dest: PathBuf,
    work: PathBuf,
    /// The two folders, opened once: every file operation goes through these.
    dest_dir: Arc<Dir>,
    work_dir: Arc<Dir>,
    /// The work folder is on tmpfs, where preallocating fills RAM pages for nothing.
    work_on_tmpfs: bool,
    /// st_dev of the work folder: the ledger's key for its file system.
    dev: u64,
    /// Background hashes of parts closed unfinished, by part name, with the part's stamp at
    /// close: a part reopened in this process (a FastDP connection recycled every 500 MB, a
    /// reconnect) goes on hashing from there instead of reading its prefix back from zero.
    /// Used only while the part's stamp is unchanged; at most [`MAX_STASHED`] entries.
    hash_stash: std::sync::Mutex<std::collections::HashMap<OsString, (FileStamp, HashState)>>,
}

/// Hash states kept for closed parts (a few hundred bytes each).
const MAX_STASHED: usize = 256;

impl IngestDir {
    /// `dest`: the folder final files land in. `work`: the folder for temporaries/partials, on the
    /// same file system. Callers pass `<root>/.ferry/ingest/<protocol>` for a served folder (a
    /// server should prefer [`for_catalog`](Self::for_catalog)), and `dest` itself for a client
    /// output folder (then temporaries are dot-files there:
    /// `.ferry-<hex tag>-<pid>-<counter>.part`, created with `O_EXCL | O_NOFOLLOW`).
    ///
    /// `dest` is created if missing (default mode) and opened once, following the path as given.
    /// A `work` inside `dest` is reached from `dest`'s descriptor one component at a time,
    /// each created if missing (mode 0700) and opened without following a link, and each must
    /// belong to the user running ferry and be writable by nobody else (so a planted
    /// `OUT/.ferry` link or someone else's folder there is refused, with a message). A `work`
    /// elsewhere is created (mode 0700) and opened by its path, and must be private too. Fails
    /// if the two folders are on different file systems, since publishing is a rename.
    pub fn new(dest: &Path, work: &Path) -> io::Result<IngestDir> {
        let dest_dir = Arc::new(Dir::create_all(dest)?);
        let work_dir = if work == dest {
            Arc::clone(&dest_dir)
        } else if let Some(rel) = work.strip_prefix(dest).ok().filter(|r| is_plain_path(r)) {
            let mut at: Option<Dir> = None;
            for part in rel.components() {
                let Component::Normal(name) = part else {
                    unreachable!("is_plain_path")
                };
                let name = name.to_str().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "ingest: non-UTF-8 work folder")
                })?;
                at = Some(
                    at.as_ref()
                        .unwrap_or(&dest_dir)
                        .private_subdir(name, true)?,
                );
            }
            Arc::new(at.expect("a non-empty relative path"))
        } else {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(work)?;
            let w = Dir::open(work)?;
            w.check_private()?;
            Arc::new(w)
        };
        IngestDir::from_dirs(dest_dir, work_dir)
    }

    /// The ingest folder of a served folder: final files land in `catalog`'s root (its
    /// descriptor) and temporaries in `.ferry/ingest/<protocol>`, reached from the catalog's
    /// `.ferry` descriptor (never by path), created if missing and checked private.
    pub fn for_catalog(catalog: &CatalogHandle, protocol: &str) -> io::Result<IngestDir> {
        let work = catalog
            .state()
            .private_subdir("ingest", true)?
            .private_subdir(protocol, true)?;
        let dest = Arc::clone(catalog.root_dir());
        IngestDir::from_dirs(dest, Arc::new(work))
    }

    /// The same working folder (its descriptor), publishing into `dest` instead (opened as
    /// [`new`](Self::new) opens it): a download into another folder keeps its partials where
    /// this folder keeps them.
    pub fn with_dest(&self, dest: &Path) -> io::Result<IngestDir> {
        let dest_dir = Arc::new(Dir::create_all(dest)?);
        let mut d = IngestDir::from_dirs(dest_dir, Arc::clone(&self.inner.work_dir))?;
        d.durable = self.durable;
        Ok(d)
    }

    fn from_dirs(dest_dir: Arc<Dir>, work_dir: Arc<Dir>) -> io::Result<IngestDir> {
        let (d, w) = (dest_dir.stat()?, work_dir.stat()?);
        if d.dev() != w.dev() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "ingest: dest and work are on different file systems",
            ));
        }
        Ok(IngestDir {
            inner: Arc::new(Paths {
                dest: dest_dir.path().to_owned(),
                work: work_dir.path().to_owned(),
                work_on_tmpfs: work_dir.fs_type().ok() == Some(TMPFS_MAGIC),
                dest_dir,
                work_dir,
                dev: w.dev(),
                hash_stash: Default::default(),
            }),
            durable: true,
            disk_reserve: 0,
            owner: None,
        })
    }

    /// Every transfer of this folder (and of its clones made after this call) leaves `bytes`
    /// free on the file system, counting what other transfers of the process were promised
    /// ([`ledger`]): a file that does not fit is refused with `ENOSPC` before its first byte,
    /// and a step that no longer fits fails its write with `ENOSPC`.
    pub fn set_disk_reserve(&mut self, bytes: u64) {
        self.disk_reserve = bytes;
    }

    /// Bytes kept free (see [`set_disk_reserve`](Self::set_disk_reserve)).
    pub fn disk_reserve(&self) -> u64 {
        self.disk_reserve
    }

    /// This folder for transfers on behalf of `owner` (a peer's address), who may hold at most
    /// `max_bytes` of space granted and not yet written over all its transfers at once; past
    /// that a transfer is refused with `EDQUOT` ([`ledger`]).
    pub fn for_owner(&self, owner: &str, max_bytes: u64) -> IngestDir {
        IngestDir {
            owner: Some((Arc::from(owner), max_bytes)),
            ..self.clone()
        }
    }

    /// Whether commits fsync the file and the folder (default true).
    pub fn set_durable(&mut self, on: bool) {
        self.durable = on;
    }

    pub fn is_durable(&self) -> bool {
        self.durable
    }

    /// The folder final files land in.
    pub fn dest(&self) -> &Path {
        &self.inner.dest
    }

    /// The folder temporaries and partials live in.
    pub fn work(&self) -> &Path {
        &self.inner.work
    }

    /// The destination folder's descriptor.
    pub fn dest_dir(&self) -> &Dir {
        &self.inner.dest_dir
    }

    /// The working folder's descriptor: every temporary, part and bitmap is reached through it.
    pub fn work_dir(&self) -> &Dir {
        &self.inner.work_dir
    }

    /// Keeps the background hash of the part `name` (open as `file`, all writes done) for a
    /// reopen in this process.
    fn stash_hash(&self, name: &OsStr, file: &File, st: HashState) {
        let Ok(m) = file.metadata() else { return };
        let mut stash = self
            .inner
            .hash_stash
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if stash.len() >= MAX_STASHED && !stash.contains_key(name) {
            stash.clear();
        }
        stash.insert(name.to_owned(), (FileStamp::from_metadata(&m), st));
    }

    /// Takes the hash kept for the part `name` if `file` still has the stamp it had at close.
    fn take_stashed_hash(&self, name: &OsStr, file: &File) -> Option<HashState> {
        let (stamp, st) = self
            .inner
            .hash_stash
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name)?;
        let now = FileStamp::from_metadata(&file.metadata().ok()?);
        (now == stamp).then_some(st)
    }

    /// Forgets the hash kept for the part `name` (its bytes are being discarded).
    fn forget_stashed_hash(&self, name: &OsStr) {
        self.inner
            .hash_stash
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name);
    }

    /// Whether temporaries live on tmpfs: streams are not preallocated there (the space is
    /// checked instead), since fallocate(2) on tmpfs takes and clears RAM pages that the writes
    /// then overwrite (about 10% of a 1 GiB download into /dev/shm).
    pub(super) fn work_on_tmpfs(&self) -> bool {
        self.inner.work_on_tmpfs
    }

    /// Bytes an unprivileged process may still write on the work folder's file system
    /// (`statvfs`: `f_bavail * f_frsize`), for callers that keep a reserve free (TEJ's
    /// `disk_reserve`).
    pub fn available_bytes(&self) -> io::Result<u64> {
        let st = self.work_dir().statvfs()?;
        // The fields are u32 on some 32-bit targets.
        #[allow(clippy::useless_conversion)]
        let (avail, frsize) = (u64::from(st.f_bavail), u64::from(st.f_frsize));
        Ok(avail.saturating_mul(frsize))
    }

    /// Where every new transfer of `len` bytes takes its disk space, streams and shared
    /// transfers alike: it is admitted against the process-wide [`ledger`] (free space minus
    /// what other transfers were promised minus the reserve; `ENOSPC` if short) and then takes
    /// its space step by step through the returned [`ledger::Reservation`], which gives back
    /// what is left when it drops. [`reserve_kind`](Self::reserve_kind) says whether the
    /// caller preallocates the steps with fallocate(2) or only writes them.
    pub(super) fn reserve_space(&self, len: u64) -> io::Result<ledger::Reservation> {
        let account = ledger::Account {
            dev: self.inner.dev,
            disk_reserve: self.disk_reserve,
            owner: self.owner.clone(),
        };
        ledger::Reservation::admit(account, len, self.free_for_ledger()?)
    }

    /// statvfs for the ledger; a file system that cannot say is taken as roomy (as before the
    /// ledger existed: only fallocate or the writes can refuse then).
    pub(super) fn free_for_ledger(&self) -> io::Result<u64> {
        Ok(self.available_bytes().unwrap_or(u64::MAX))
    }

    /// How reserved steps become real: preallocated, or (tmpfs) only checked.
    pub(super) fn reserve_kind(&self) -> Reserve {
        if self.work_on_tmpfs() {
            Reserve::Checked
        } else {
            Reserve::Preallocate
        }
    }

    /// Removes stale streaming temporaries (not resumable partials) left by a dead process of ours.
    ///
    /// A temporary is stale when its pid is not running, or is our own pid under a different
    /// process tag (a restarted process that got the same pid, as pid 1 in a container does).
    /// Returns how many files were removed.
    pub fn clean_stale(&self) -> io::Result<usize> {
        let me = std::process::id();
        let tag = process_tag();
        let dir = self.work_dir();
        let doomed = |t: &str, pid| {
            if pid == me {
                t != tag
            } else {
                !is_pid_alive(pid)
            }
        };
        remove_temporaries(dir, doomed, |name| dir.remove_file(name))
    }

    /// Streaming ingest (TEJ, JTP client): a fresh exclusive temp file, preallocated with
    /// fallocate(2) to `size_hint` when given (ENOSPC -> error before any byte is written), written
    /// sequentially with a running SHA-256 and xxHash64.
    pub fn begin_stream(&self, size_hint: Option<u64>) -> io::Result<StreamSink> {
        StreamSink::create(self.clone(), size_hint, true)
    }

    /// [`begin_stream`](Self::begin_stream) computing only xxHash64 (JTP's ids): SHA-256 costs
    /// more than the rest of a loopback transfer, so a client that verifies by xxHash64 skips it.
    /// [`Committed::sha256`] is then None.
    pub fn begin_stream_xxh64(&self, size_hint: Option<u64>) -> io::Result<StreamSink> {
        StreamSink::create(self.clone(), size_hint, false)
    }

    /// Resumable ingest (CJP2P, FastDP, filestorage): `key` names the transfer (e.g. hex sha256);
    /// creates or reopens `<work>/<key>.part` sized (sparse, set_len) to `size` and
    /// `<work>/<key>.bitmap` (header: magic, format version, size, block size; then one bit per
    /// block, LSB first). Reopening with a header that does not match restarts from zero.
    ///
    /// `key` must be 1 to [`MAX_KEY_BYTES`] of `[A-Za-z0-9_-]`; `block_size` must not be 0. The
    /// part file is locked (`flock`) while the returned value lives: a second `begin_resumable`
    /// of the same key, from any process, fails with `WouldBlock`.
    ///
    /// Several connections writing one part at once use a [`TransferRegistry`] instead.
    pub fn begin_resumable(&self, key: &str, size: u64, block_size: u32) -> io::Result<Resumable> {
        Resumable::open(self.clone(), key, size, block_size)
    }
}

/// What [`IngestDir::reserve_space`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reserve {
    /// Preallocate the file with fallocate(2).
    Preallocate,
    /// The space is there (tmpfs, where preallocating would only clear RAM pages).
    Checked,
}

/// `f_type` of tmpfs in statfs(2).
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// A random-enough tag for this process, fixed for its lifetime: tells our temporaries from
/// those of an earlier process that had the same pid.
fn process_tag() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let local = 0u8;
        let mut seed = Vec::with_capacity(40);
        seed.extend_from_slice(&now.as_nanos().to_le_bytes());
        seed.extend_from_slice(&std::process::id().to_le_bytes());
        seed.extend_from_slice(&(&local as *const u8 as usize).to_le_bytes());
        let mut urandom = [0u8; 8];
        if let Ok(mut f) = fs::File::open("/dev/urandom") {
            let _ = io::Read::read_exact(&mut f, &mut urandom);
        }
        seed.extend_from_slice(&urandom);
        format!("{:08x}", twox_hash::XxHash64::oneshot(0, &seed) as u32)
    })
}

/// The next streaming temporary name; unique within the process (one counter for all dirs).
fn next_temp_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{TEMP_PREFIX}{}-{}-{n}{PART_SUFFIX}",
        process_tag(),
        process_id()
    )
}

/// This process's id, asked of the kernel once (getpid(2) is a real system call per file
/// otherwise; ferry never forks).
fn process_id() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}

/// Removes this process's own streaming temporaries in `folder` (not resumable partials,
/// not other processes' files): a client stopped by a signal calls it before it exits, so that
/// nothing half-written stays behind. Returns how many were removed.
pub fn remove_own_temporaries(folder: &Path) -> io::Result<usize> {
    let (me, tag) = (process_id(), process_tag());
    let dir = Dir::open(folder)?;
    remove_temporaries(
        &dir,
        |t, pid| pid == me && t == tag,
        |name| dir.remove_file(name),
    )
}

/// Removes (with `remove`) the streaming temporaries (regular files named by
/// [`next_temp_name`]) in `dir` whose (tag, pid) `doomed` picks; how many went. One gone
/// meanwhile (another cleaner got there first) is skipped; any other error stops.
fn remove_temporaries(
    dir: &Dir,
    doomed: impl Fn(&str, u32) -> bool,
    remove: impl Fn(&OsStr) -> io::Result<()>,
) -> io::Result<usize> {
    let mut removed = 0;
    for name in dir.names()? {
        let picked = name
            .to_str()
            .and_then(parse_temp_name)
            .is_some_and(|(t, pid)| doomed(t, pid));
        if picked && dir.stat_at(&name).is_ok_and(|st| st.is_file()) {
            match remove(&name) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

/// Parses `.ferry-<hex tag>-<pid>-<counter>.part` into (tag, pid).
fn parse_temp_name(name: &str) -> Option<(&str, u32)> {
    let rest = name.strip_prefix(TEMP_PREFIX)?.strip_suffix(PART_SUFFIX)?;
    let mut parts = rest.split('-');
    let (tag, pid, counter) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || tag.is_empty()
        || !tag.bytes().all(|b| b.is_ascii_hexdigit())
        || counter.is_empty()
        || !counter.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some((tag, pid.parse().ok()?))
}

fn is_pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    alive_after_kill0(r, io::Error::last_os_error().raw_os_error())
}

/// What `kill(pid, 0)` returning `r` (and `errno`) says: only ESRCH means no such process; a
/// process of another user (EPERM) is alive, and its temporaries are not ours to remove.
fn alive_after_kill0(r: libc::c_int, errno: Option<i32>) -> bool {
    r == 0 || errno != Some(libc::ESRCH)
}

use crate::wire::hex::encode as hex;

/// The expected and actual ids as lowercase hex, or None when they agree.
fn check(expect: Expect, sha256: Option<&[u8; 32]>, xxh64: u64) -> Option<IngestError> {
    match expect {
        Expect::Sha256(want) if sha256 != Some(&want) => Some(IngestError::Mismatch {
            expected: hex(&want),
            actual: sha256.map_or_else(|| "not computed".into(), |s| hex(s)),
        }),
        Expect::Xxh64(want) if want != xxh64 => Some(IngestError::Mismatch {
            expected: format!("{want:016x}"),
            actual: format!("{xxh64:016x}"),
        }),
        _ => None,
    }
}

/// First 8 hex digits of the id the caller expects: xxh64 for `Xxh64`, SHA-256 otherwise.
fn tag_for(expect: Expect, sha256: Option<&[u8; 32]>, xxh64: u64) -> String {
    match (expect, sha256) {
        (Expect::Xxh64(_), _) | (_, None) => format!("{xxh64:016x}")[..8].to_owned(),
        (_, Some(sha)) => hex(&sha[..4]),
    }
}

/// A relative path of plain components only (no `..`, `.`, root or prefix), at least one.
fn is_plain_path(p: &Path) -> bool {
    p.components().next().is_some() && p.components().all(|c| matches!(c, Component::Normal(_)))
}

/// A final name as the folders' descriptors take it.
fn os(name: &str) -> &OsStr {
    OsStr::new(name)
}

/// A final name must be one plain path component; callers sanitise, this is the last guard.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= crate::names::MAX_NAME_BYTES
        && !name.contains(['/', '\0'])
}

#[cfg(test)]
pub(crate) mod test_dir {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh folder under the system temp dir, removed on drop.
    pub struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new(what: &str) -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "ferry-test-ingest-{what}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Set in the child run of [`tmpfs_for`] to the tmpfs mounted for it.
    const TMPFS_ENV: &str = "FERRY_TEST_TMPFS";

    /// A tmpfs folder for the test named `test`: `/dev/shm` when it is one. Otherwise the test
    /// runs again, alone, in a private mount namespace with a tmpfs mounted for it
    /// (`unshare -rm`, root in CI), and `None` is returned once that run has passed. Fails,
    /// saying why, when neither is possible: never a silent pass.
    pub fn tmpfs_for(test: &str) -> Option<std::path::PathBuf> {
        use super::TMPFS_MAGIC;
        let statfs_type =
            |p: &std::path::Path| crate::dir::Dir::open(p).and_then(|d| d.fs_type()).ok();
        if let Some(d) = std::env::var_os(TMPFS_ENV) {
            let d = std::path::PathBuf::from(d);
            assert_eq!(statfs_type(&d), Some(TMPFS_MAGIC), "{}", d.display());
            return Some(d);
        }
        let shm = std::path::Path::new("/dev/shm");
        if statfs_type(shm) == Some(TMPFS_MAGIC) {
            return Some(shm.to_path_buf());
        }
        let mnt = TempDir::new("tmpfs-mount");
        let o = std::process::Command::new("unshare")
            .args(["-rm", "sh", "-c"])
            .arg(
                "mount -t tmpfs -o size=64m ferry-test \"$FERRY_TEST_TMPFS\" && exec \"$0\" \"$@\"",
            )
            .arg(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(TMPFS_ENV, &mnt.0)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!("/dev/shm is not tmpfs and unshare cannot run to mount one: {e}")
            });
        let out = String::from_utf8_lossy(&o.stdout);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success() && out.contains("1 passed"),
            "/dev/shm is not tmpfs; in a private mount namespace with a tmpfs (unshare -rm) \
             {test} failed or could not start:\n{err}\n{out}"
        );
        None
    }

    /// Names in a folder, sorted.
    pub fn list(dir: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::part::Part;
    use super::test_dir::{list, TempDir};
    use super::*;

    #[test]
    fn temp_names_parse_back() {
        let n = next_temp_name();
        let (tag, pid) = parse_temp_name(&n).unwrap();
        assert_eq!(tag, process_tag());
        assert_eq!(pid, std::process::id());
        assert_eq!(parse_temp_name(".ferry-zz-1-2.part"), None);
        assert_eq!(parse_temp_name(".ferry-ab-1-2-3.part"), None);
        assert_eq!(parse_temp_name("0123abcd.part"), None);
        assert_eq!(parse_temp_name(".ferry-ab-12-7.part"), Some(("ab", 12)));
        assert_eq!(parse_temp_name(".ferry-ab-12-7x.part"), None);
        assert_eq!(parse_temp_name(".ferry-ab-12-.part"), None);
    }

    /// A work folder named through `dest/..` is not inside `dest`: it is made by its path (and
    /// must be private), not walked component by component from `dest` (mutation run:
    /// `is_plain_path` always true walked into `..` and panicked).
    #[test]
    fn a_work_folder_named_through_dotdot_is_made_by_its_path() {
        let t = TempDir::new("work-dotdot");
        let dest = t.0.join("dest");
        let work = dest.join("..").join("work");
        let dir = IngestDir::new(&dest, &work).unwrap();
        let m = fs::metadata(t.0.join("work")).unwrap();
        assert!(m.is_dir());
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777,
            0o700
        );
        let mut s = dir.begin_stream(None).unwrap();
        s.write_all(&[7u8; 1 << 20]).unwrap(); // past the memory buffer: on disk
        assert_eq!(list(&t.0.join("work")).len(), 1);
        assert!(list(&dest).is_empty());
    }

    /// Two cleaners at once: a temporary the other one removed first is skipped, not an
    /// error; any other failure to remove one is said (mutation run: the `NotFound` guard
    /// forced either way was missed).
    #[test]
    fn a_temporary_removed_meanwhile_is_skipped_other_failures_are_errors() {
        let t = TempDir::new("temps-race");
        let dir = Dir::open(&t.0).unwrap();
        for n in 0..3 {
            fs::write(t.0.join(format!(".ferry-abcd-1-{n}.part")), b"x").unwrap();
        }
        let all = |_: &str, _| true;
        let gone = |name: &OsStr| {
            if name == ".ferry-abcd-1-1.part" {
                Err(io::Error::from(io::ErrorKind::NotFound))
            } else {
                dir.remove_file(name)
            }
        };
        assert_eq!(remove_temporaries(&dir, all, gone).unwrap(), 2);
        fs::write(t.0.join(".ferry-abcd-1-4.part"), b"x").unwrap();
        let denied = |_: &OsStr| Err(io::Error::from(io::ErrorKind::PermissionDenied));
        let e = remove_temporaries(&dir, all, denied).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
    }

    /// The stash of background hashes (kept for a reopen in this process) holds many parts at
    /// once, stays bounded (the next new name past [`MAX_STASHED`] empties it; a name already
    /// there is only replaced), and forgets a part whose bytes are discarded.
    #[test]
    fn the_hash_stash_holds_many_parts_bounded_and_forgets_discarded_ones() {
        use super::prefix_hash::HashState;
        let t = TempDir::new("hash-stash");
        let dir = IngestDir::new(&t.0, &t.0).unwrap();
        let file = File::create(t.0.join("p")).unwrap();
        let name = |i: usize| OsString::from(format!("p{i}.part"));
        let stash = |i: usize| {
            let mut st = HashState::new();
            st.hashed = i as u64;
            dir.stash_hash(&name(i), &file, st);
        };
        let take = |i: usize| dir.take_stashed_hash(&name(i), &file).map(|st| st.hashed);
        stash(1);
        stash(2);
        assert_eq!((take(1), take(2)), (Some(1), Some(2)));
        for i in 0..MAX_STASHED {
            stash(i);
        }
        // Full: a name already kept is replaced, nothing else is dropped.
        stash(5);
        assert_eq!(take(0), Some(0));
        stash(0);
        // A new name past the bound: the stash starts over with it.
        stash(MAX_STASHED);
        assert_eq!(
            (take(0), take(MAX_STASHED)),
            (None, Some(MAX_STASHED as u64))
        );
        stash(7);
        dir.forget_stashed_hash(&name(7));
        assert_eq!(take(7), None);
    }

    /// A folder for an owner charges that owner's cap (past it, `EDQUOT`); the folder it was
    /// made from charges no owner.
    #[test]
    fn a_folder_for_an_owner_is_held_to_its_cap() {
        let t = TempDir::new("owner-cap");
        let dir = IngestDir::new(&t.0, &t.0).unwrap();
        let roomy = || Ok(1 << 40);
        let mut r = dir
            .for_owner("owner-cap-test", 100)
            .reserve_space(1000)
            .unwrap();
        let e = r.ensure(1000, roomy).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EDQUOT));
        let mut r = dir.reserve_space(1000).unwrap();
        r.ensure(1000, roomy).unwrap();
    }

    #[test]
    fn clean_stale_removes_only_dead_temporaries() {
        let t = TempDir::new("stale");
        let dir = IngestDir::new(&t.0, &t.0).unwrap();
        let me = std::process::id();
        // Ours under another tag (a previous process with our pid): stale.
        fs::write(t.0.join(format!(".ferry-00000000-{me}-0.part")), b"x").unwrap();
        // A pid that cannot exist: stale.
        fs::write(t.0.join(".ferry-abcd-2147483647-3.part"), b"x").unwrap();
        // A live process (pid 1 always exists): kept.
        fs::write(t.0.join(".ferry-abcd-1-3.part"), b"x").unwrap();
        // Resumable partials and user files: kept.
        fs::write(t.0.join("0123.part"), b"x").unwrap();
        fs::write(t.0.join("photo.png"), b"x").unwrap();
        // Preallocated, so its temporary exists at once.
        let live = dir.begin_stream(Some(1 << 20)).unwrap();
        assert_eq!(dir.clean_stale().unwrap(), 2);
        let left = list(&t.0);
        assert_eq!(left.len(), 4, "{left:?}");
        assert!(left.contains(&".ferry-abcd-1-3.part".to_owned()));
        live.abort();
        assert_eq!(list(&t.0).len(), 3);
    }

    /// A full disk, a full quota and an error that only says "storage full" are all `NoSpace`
    /// (the protocols answer it with their no-space codes); other errors stay I/O errors
    /// (mutation shard 11/40: `||` as `&&` left EDQUOT, whose kind is not StorageFull, an
    /// I/O error).
    #[test]
    fn a_full_disk_or_quota_is_no_space() {
        for e in [
            io::Error::from_raw_os_error(libc::ENOSPC),
            io::Error::from_raw_os_error(libc::EDQUOT),
            io::Error::from(io::ErrorKind::StorageFull),
        ] {
            assert!(matches!(IngestError::from(e), IngestError::NoSpace));
        }
        let e = IngestError::from(io::Error::from_raw_os_error(libc::EIO));
        assert!(matches!(e, IngestError::Io(_)), "{e}");
    }

    /// A process signal 0 may not reach (another user's, EPERM) is alive: its temporaries stay
    /// (mutation sample H: `||` as `&&` took it for dead; tests run as root, for whom every
    /// `kill` succeeds, so the reading of the result is checked on its own).
    #[test]
    fn only_esrch_means_a_process_is_gone() {
        assert!(alive_after_kill0(0, None));
        assert!(
            alive_after_kill0(0, Some(libc::ESRCH)),
            "errno is stale after success"
        );
        assert!(alive_after_kill0(-1, Some(libc::EPERM)));
        assert!(!alive_after_kill0(-1, Some(libc::ESRCH)));
        assert!(is_pid_alive(std::process::id()) && !is_pid_alive(i32::MAX as u32));
    }

    /// What a client stopped by a signal removes: its own temporaries only, even one being
    /// written; other processes' temporaries, partials and user files stay.
    #[test]
    fn remove_own_temporaries_takes_only_ours() {
        let t = TempDir::new("own-temps");
        let dir = IngestDir::new(&t.0, &t.0).unwrap();
        let me = std::process::id();
        fs::write(t.0.join(format!(".ferry-00000000-{me}-0.part")), b"x").unwrap();
        fs::write(t.0.join(".ferry-abcd-1-3.part"), b"x").unwrap();
        fs::write(t.0.join("0123.part"), b"x").unwrap();
        fs::write(t.0.join("photo.png"), b"x").unwrap();
        let mut live = dir.begin_stream(Some(1 << 20)).unwrap();
        live.write_all(&[1; 4096]).unwrap();
        assert_eq!(list(&t.0).len(), 5);
        assert_eq!(remove_own_temporaries(&t.0).unwrap(), 1);
        let left = list(&t.0);
        assert_eq!(left.len(), 4, "{left:?}");
        assert!(left
            .iter()
            .all(|n| !n.starts_with(&format!(".ferry-{}-", process_tag()))));
        assert_eq!(remove_own_temporaries(&t.0).unwrap(), 0);
        drop(live);
    }

    #[test]
    fn reports_free_space() {
        let t = TempDir::new("space");
        let dir = IngestDir::new(&t.0, &t.0).unwrap();
        assert!(dir.available_bytes().unwrap() > 0);
    }

    /// The disk reserve set on a folder holds for it and its later clones, and a file that
    /// would eat into it is refused before its first byte (mutation shards 18-19/40: a
    /// `set_disk_reserve` that did nothing, and `disk_reserve` as 0, stayed green here; the
    /// servers' tests of `--disk-reserve` are integration tests).
    #[test]
    fn the_disk_reserve_holds_for_the_folder_and_its_clones() {
        let t = TempDir::new("reserve");
        let mut dir = IngestDir::new(&t.0, &t.0).unwrap();
        assert_eq!(dir.disk_reserve(), 0);
        let free = dir.available_bytes().unwrap();
        dir.set_disk_reserve(free);
        let clone = dir.clone();
        assert_eq!((dir.disk_reserve(), clone.disk_reserve()), (free, free));
        let e = clone.begin_stream(Some(64 << 20)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    }

    #[test]
    fn work_dir_is_private_and_created() {
        let t = TempDir::new("mkwork");
        let work = t.0.join(".ferry").join("ingest");
        let dir = IngestDir::new(&t.0, &work).unwrap();
        assert_eq!(dir.work(), work);
        let mode = std::os::unix::fs::MetadataExt::mode(&fs::metadata(&work).unwrap()) & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn a_planted_link_in_the_work_folder_is_never_written_through() {
        let t = TempDir::new("planted");
        let victim = TempDir::new("planted-victim");
        fs::write(victim.0.join("target"), b"keep me").unwrap();
        let dir = IngestDir::new(&t.0, &t.0.join(".ferry/ingest/cjp2p")).unwrap();
        std::os::unix::fs::symlink(victim.0.join("target"), dir.work().join("k.part")).unwrap();
        let e = dir.begin_resumable("k", 1 << 20, 4096).unwrap_err();
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        fs::remove_file(dir.work().join("k.part")).unwrap();
        // A link where the bitmap goes is replaced by the new bitmap (created O_EXCL under
        // another name, then renamed), never written through.
        std::os::unix::fs::symlink(victim.0.join("target"), dir.work().join("k.bitmap")).unwrap();
        let r = dir.begin_resumable("k", 1 << 20, 4096).unwrap();
        assert!(fs::symlink_metadata(dir.work().join("k.bitmap"))
            .unwrap()
            .is_file());
        drop(r);
        Part::remove(&dir, "k").unwrap();
        // A hard link to someone's file is refused too (nobody else can make one here, but
        // the check is on what was opened, whatever the folder).
        fs::hard_link(victim.0.join("target"), dir.work().join("k.part")).unwrap();
        let e = dir.begin_resumable("k", 1 << 20, 4096).unwrap_err();
        assert!(e.to_string().contains("hard links"), "{e}");
        assert_eq!(fs::read(victim.0.join("target")).unwrap(), b"keep me");
        assert_eq!(list(&victim.0), ["target"]);
    }

    #[test]
    fn a_work_folder_that_is_a_link_or_open_to_others_is_refused() {
        let t = TempDir::new("worklink");
        let elsewhere = TempDir::new("worklink-elsewhere");
        std::os::unix::fs::symlink(&elsewhere.0, t.0.join(".ferry")).unwrap();
        let e = IngestDir::new(&t.0, &t.0.join(".ferry/ingest/cjp2p")).unwrap_err();
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        assert!(list(&elsewhere.0).is_empty());
        fs::remove_file(t.0.join(".ferry")).unwrap();
        fs::create_dir(t.0.join(".ferry")).unwrap();
        fs::set_permissions(
            t.0.join(".ferry"),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let e = IngestDir::new(&t.0, &t.0.join(".ferry/ingest/cjp2p")).unwrap_err();
        assert!(e.to_string().contains("chmod go-w"), "{e}");
        assert!(list(&t.0.join(".ferry")).is_empty());
    }

    #[test]
    fn with_dest_keeps_the_work_folder_and_for_catalog_uses_the_state_folder() {
        let t = TempDir::new("withdest");
        let cat = CatalogHandle::open(&t.0, crate::catalog::CatalogOptions::default()).unwrap();
        let dir = IngestDir::for_catalog(&cat, "test").unwrap();
        assert_eq!(dir.work(), t.0.join(".ferry/ingest/test"));
        assert_eq!(dir.dest(), t.0);
        let other = t.0.join("other");
        let moved = dir.with_dest(&other).unwrap();
        assert_eq!(moved.work(), dir.work());
        let mut s = moved.begin_stream(None).unwrap();
        s.write_all(b"x").unwrap();
        let c = s.commit("x.bin", Expect::Nothing).unwrap();
        assert_eq!(c.path, other.join("x.bin"));
        assert_eq!(fs::read(&c.path).unwrap(), b"x");
    }

    #[test]
    fn error_display_is_lowercase_and_prefixed() {
        let errs = [
            IngestError::Io(io::Error::other("boom")),
            IngestError::Mismatch {
                expected: "00".into(),
                actual: "11".into(),
            },
            IngestError::NoSpace,
            IngestError::BadName,
            IngestError::Incomplete { missing: 3 },
        ];
        for e in errs {
            let s = e.to_string();
            assert!(s.starts_with("ingest: "), "{s}");
        }
        let e: IngestError = io::Error::from_raw_os_error(libc::ENOSPC).into();
        assert!(matches!(e, IngestError::NoSpace));
        // The I/O error is the source a caller's chain walks to (mutation sample F: `source`
        // returning None stayed green); the others have none.
        use std::error::Error;
        let e = IngestError::Io(io::Error::from_raw_os_error(libc::EACCES));
        let src = e.source().and_then(|s| s.downcast_ref::<io::Error>());
        assert_eq!(src.and_then(io::Error::raw_os_error), Some(libc::EACCES));
        assert!(IngestError::NoSpace.source().is_none());
    }

    #[test]
    fn tags_follow_the_expected_id_kind() {
        let sha = [0xab; 32];
        assert_eq!(
            tag_for(Expect::Xxh64(1), Some(&sha), 0x84fe30f5845a521f),
            "84fe30f5"
        );
        assert_eq!(tag_for(Expect::Sha256(sha), Some(&sha), 1), "abababab");
        assert_eq!(tag_for(Expect::Nothing, Some(&sha), 1), "abababab");
    }
}
