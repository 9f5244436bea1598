//! Listing the served folder and hashing files: the blocking I/O half of the catalog.
//!
//! [`list`] reads the root once (not recursively, through the root's descriptor) and sorts every
//! name into a servable [`Candidate`] or a [`SkipReason`]; a symlink is resolved only beneath
//! the root ([`Dir::open_beneath`]), so a link out of the folder or into `.ferry/` never
//! counts, however it is swapped meanwhile. [`hash_files`] computes xxHash64 (seed 0) and SHA-256 of
//! many files on up to `available_parallelism()` threads, each file in one pass of 1 MiB
//! `read(2)` calls. Files are never read through a mapping: a file truncated while we hash it
//! must give a short read, not SIGBUS.
//!
//! Out of scope: deciding what to re-hash (the index and the previous snapshot do that, in
//! `mod.rs`) and any protocol-specific filtering (extensions, size limits).

use super::mapped::FileStamp;
use crate::dir::{fstat, BeneathError, Dir};
use sha2::{Digest, Sha256};
use std::ffi::{OsStr, OsString};
use std::hash::Hasher as _;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use unicode_normalization::UnicodeNormalization;

/// Name of the state folder inside the root; never served.
pub const STATE_DIR: &str = ".ferry";
/// Size of one read while hashing.
const HASH_CHUNK: usize = 1 << 20;
/// Smallest read buffer used for hashing.
const MIN_HASH_BUFFER: usize = 4096;

/// `available_parallelism()`, asked once (it reads cgroup files on every call).
fn parallelism() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

/// Why a directory entry is not part of the catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// The name starts with `.` (hidden files, temporaries, `.ferry/`).
    Hidden,
    /// The name is not valid UTF-8.
    NotUtf8,
    /// A directory, socket, device, fifo, or a symlink to one.
    NotRegular,
    /// A symlink that leads outside the root (an absolute target elsewhere, `..` above it).
    SymlinkOutside,
    /// A symlink that leads through a name starting with `.` (e.g. into `.ferry/`).
    SymlinkToHidden,
    /// A symlink that does not resolve.
    BrokenSymlink,
    /// `stat` failed (typically: removed between readdir and stat).
    Unstatable(io::ErrorKind),
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::Hidden => f.write_str("hidden name"),
            SkipReason::NotUtf8 => f.write_str("name is not utf-8"),
            SkipReason::NotRegular => f.write_str("not a regular file"),
            SkipReason::SymlinkOutside => f.write_str("symlink resolves outside the root"),
            SkipReason::SymlinkToHidden => f.write_str("symlink resolves to a hidden name"),
            SkipReason::BrokenSymlink => f.write_str("broken symlink"),
            SkipReason::Unstatable(kind) => write!(f, "cannot stat: {kind}"),
        }
    }
}

/// A servable file found by [`list`], not yet hashed.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// The on-disk name (the index key).
    pub disk_name: OsString,
    /// NFC form of the name.
    pub name: String,
    /// `root.join(disk_name)`, for messages and [`Entry::path`](super::Entry::path).
    pub path: PathBuf,
    /// Stamp of the file (of the target, for a symlink), taken without following any link
    /// the resolver did not check: `fstatat(AT_SYMLINK_NOFOLLOW)` of a plain name, `fstat` of
    /// the descriptor a symlink was resolved to.
    pub stamp: FileStamp,
}

/// Everything one pass over the root found.
#[derive(Debug, Default)]
pub struct Listing {
    pub files: Vec<Candidate>,
    /// Excluded names, except the state folder itself.
    pub skipped: Vec<(OsString, SkipReason)>,
}

/// The served folder as the scanner sees it: its descriptor (every name is looked at
/// relative to it) and the paths an absolute symlink target may begin with to count as inside
/// ([`Dir::open_beneath`]).
pub struct Root<'a> {
    pub dir: &'a Dir,
    pub roots: &'a [PathBuf],
}

/// Reads the root once.
pub fn list(root: &Root<'_>) -> io::Result<Listing> {
    let mut listing = Listing::default();
    for disk_name in root.dir.names()? {
        if disk_name == STATE_DIR {
            continue;
        }
        match classify(root, &disk_name) {
            Ok(c) => listing.files.push(c),
            Err(reason) => listing.skipped.push((disk_name, reason)),
        }
    }
    Ok(listing)
}

/// Decides whether `root/disk_name` belongs in the catalog. A plain name is looked at with
/// `fstatat` and never opened (a FIFO or device is excluded without an open); a symlink is
/// resolved beneath the root and its stamp taken on the descriptor it resolved to.
pub fn classify(root: &Root<'_>, disk_name: &OsStr) -> Result<Candidate, SkipReason> {
    if disk_name.as_bytes().first() == Some(&b'.') {
        return Err(SkipReason::Hidden);
    }
    let Some(utf8) = disk_name.to_str() else {
        return Err(SkipReason::NotUtf8);
    };
    let lst = root
        .dir
        .stat_at(disk_name)
        .map_err(|e| SkipReason::Unstatable(e.kind()))?;
    let st = if lst.is_symlink() {
        let opened = root
            .dir
            .open_beneath(disk_name, root.roots)
            .map_err(|e| match e {
                BeneathError::Outside => SkipReason::SymlinkOutside,
                BeneathError::Hidden => SkipReason::SymlinkToHidden,
                BeneathError::Broken(_) => SkipReason::BrokenSymlink,
                BeneathError::Io(e) => SkipReason::Unstatable(e.kind()),
            })?;
        fstat(opened.file.as_raw_fd()).map_err(|e| SkipReason::Unstatable(e.kind()))?
    } else {
        lst
    };
    if !st.is_file() {
        return Err(SkipReason::NotRegular);
    }
    Ok(Candidate {
        disk_name: disk_name.to_owned(),
        name: utf8.nfc().collect(),
        path: root.dir.join(disk_name),
        stamp: FileStamp::from_stat(&st),
    })
}

/// Hashes of one file and the stamp they belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hashes {
    /// `fstat` on the descriptor that was read, equal before and after reading (and equal to
    /// the stamp the file was classified with).
    pub stamp: FileStamp,
    pub xxh64: u64,
    pub sha256: [u8; 32],
}

/// Why a file could not be hashed.
#[derive(Debug)]
pub enum HashError {
    Io(io::Error),
    /// The file changed since it was classified or while it was read (stamp moved, or size
    /// and bytes read disagree).
    Changed,
}

impl std::fmt::Display for HashError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HashError::Io(e) => write!(f, "{e}"),
            HashError::Changed => f.write_str("changed while hashing"),
        }
    }
}

/// Hashes the candidate `c` in one pass, using `buf` as the read buffer. The file is opened
/// beneath the root as [`Entry::open`](super::Entry::open) opens it (`O_NOFOLLOW |
/// O_NONBLOCK`, links resolved inside the root only), its type and stamp are checked on that
/// descriptor, and the stamp must be the one `c` was classified with: hashes are only ever
/// stored for the very version the classification approved.
pub fn hash_file(root: &Root<'_>, c: &Candidate, buf: &mut [u8]) -> Result<Hashes, HashError> {
    let mut file = root
        .dir
        .open_beneath(&c.disk_name, root.roots)
        .map_err(|e| HashError::Io(e.into()))?
        .file;
    let before = file.metadata().map_err(HashError::Io)?;
    if !before.is_file() {
        return Err(HashError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    let stamp = FileStamp::from_metadata(&before);
    if stamp != c.stamp {
        return Err(HashError::Changed);
    }
    let (total, xxh64, sha256) = read_hashed(&mut file, stamp.size, buf)?;
    let after = file.metadata().map_err(HashError::Io)?;
    if !unchanged_while_read(total, &stamp, &FileStamp::from_metadata(&after)) {
        return Err(HashError::Changed);
    }
    Ok(Hashes {
        stamp,
        xxh64,
        sha256,
    })
}

/// Whether a file read whole (`total` bytes) was left alone meanwhile: as many bytes as its
/// stamp said, and the same stamp after (a write in place of the same length changes only its
/// times). Its own function: a test cannot change a file in the middle of a read.
fn unchanged_while_read(total: u64, before: &FileStamp, after: &FileStamp) -> bool {
    total == before.size && after == before
}

/// Reads `r` to its end through `buf`, hashing as it goes: (bytes read, xxHash64, SHA-256).
/// More than `limit` bytes is a change; EINTR is retried, any other read error ends it. (Its
/// own function so that a test can feed it read errors a regular file will not produce.)
fn read_hashed(
    r: &mut impl Read,
    limit: u64,
    buf: &mut [u8],
) -> Result<(u64, u64, [u8; 32]), HashError> {
    let mut xxh = twox_hash::XxHash64::with_seed(0);
    let mut sha = Sha256::new();
    let mut total = 0u64;
    loop {
        let n = match r.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(HashError::Io(e)),
        };
        xxh.write(&buf[..n]);
        sha.update(&buf[..n]);
        total += n as u64;
        if total > limit {
            return Err(HashError::Changed);
        }
    }
    Ok((total, xxh.finish(), sha.finalize().into()))
}

/// Hashes every candidate ([`hash_file`]), on up to `available_parallelism()` threads; results
/// are in input order. `size_hint` is the largest size expected: read buffers are no larger
/// than it needs (a batch of 1 KiB files must not zero a 1 MiB buffer per call).
pub fn hash_files(
    root: &Root<'_>,
    paths: &[&Candidate],
    size_hint: u64,
) -> Vec<Result<Hashes, HashError>> {
    if paths.is_empty() {
        return Vec::new();
    }
    let buf_len = usize::try_from(size_hint)
        .unwrap_or(HASH_CHUNK)
        .clamp(MIN_HASH_BUFFER, HASH_CHUNK);
    let threads = parallelism().min(paths.len());
    if threads <= 1 {
        let mut buf = vec![0u8; buf_len];
        return paths.iter().map(|c| hash_file(root, c, &mut buf)).collect();
    }
    let next = AtomicUsize::new(0);
    let mut results: Vec<Option<Result<Hashes, HashError>>> = paths.iter().map(|_| None).collect();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut buf = vec![0u8; buf_len];
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(path) = paths.get(i) else { break };
                        done.push((i, hash_file(root, path, &mut buf)));
                    }
                    done
                })
            })
            .collect();
        for w in workers {
            // A worker only panics if hashing itself panicked; treat its files as unreadable.
            for (i, r) in w.join().unwrap_or_default() {
                results[i] = Some(r);
            }
        }
    });
    results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| Err(HashError::Io(io::Error::other("hashing thread panicked"))))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A file is unchanged only if both the byte count and the stamp after agree (whole run,
    /// catalog scan part: the check's `||` as `&&` took a file rewritten in place during its
    /// hash, same length, for unchanged, and served a hash of mixed bytes).
    #[test]
    fn a_file_is_unchanged_only_if_its_length_and_stamp_agree() {
        let before = FileStamp {
            dev: 1,
            ino: 2,
            size: 100,
            mtime_ns: 5,
            ctime_ns: 5,
        };
        let rewritten = FileStamp {
            mtime_ns: 9,
            ctime_ns: 9,
            ..before
        };
        assert!(unchanged_while_read(100, &before, &before));
        assert!(!unchanged_while_read(100, &before, &rewritten));
        assert!(!unchanged_while_read(99, &before, &before));
        assert!(!unchanged_while_read(99, &before, &rewritten));
    }

    /// Classifies `name` in `dir` and hashes it with `buf`.
    fn hash_named(dir: &Path, name: &str, buf: &mut [u8]) -> Result<Hashes, HashError> {
        let d = Dir::open(dir).unwrap();
        let roots = [dir.to_owned()];
        let root = Root {
            dir: &d,
            roots: &roots,
        };
        let c = classify(&root, OsStr::new(name)).unwrap();
        hash_file(&root, &c, buf)
    }

    /// A reader that plays back `script`, one entry per `read`, then reports the end.
    struct Script(std::collections::VecDeque<io::Result<&'static [u8]>>);

    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.0.pop_front() {
                None => Ok(0),
                Some(Ok(b)) => {
                    buf[..b.len()].copy_from_slice(b);
                    Ok(b.len())
                }
                Some(Err(e)) => Err(e),
            }
        }
    }

    /// An interrupted read is tried again; any other read error ends the hash with that error
    /// (never retried into a digest of the bytes around it); more bytes than the stamp said is
    /// a change.
    #[test]
    fn read_errors_interrupted_retried_others_fail() {
        let eintr = || io::Error::from(io::ErrorKind::Interrupted);
        let eio = || io::Error::from_raw_os_error(5);
        let mut buf = [0u8; 8];
        let mut s = Script([Err(eintr()), Ok(&b"ab"[..]), Err(eintr()), Ok(b"c")].into());
        let (n, xxh, sha) = read_hashed(&mut s, 3, &mut buf).unwrap();
        assert_eq!(n, 3);
        assert_eq!(xxh, twox_hash::XxHash64::oneshot(0, b"abc"));
        assert_eq!(sha, <[u8; 32]>::from(Sha256::digest(b"abc")));
        let mut s = Script([Ok(&b"ab"[..]), Err(eio()), Ok(b"c")].into());
        match read_hashed(&mut s, 3, &mut buf) {
            Err(HashError::Io(e)) => assert_eq!(e.raw_os_error(), Some(5)),
            other => panic!("{other:?}"),
        }
        let mut s = Script([Ok(&b"ab"[..]), Ok(b"cd")].into());
        assert!(matches!(
            read_hashed(&mut s, 3, &mut buf),
            Err(HashError::Changed)
        ));
    }

    #[test]
    fn empty_file_vectors() {
        let dir = std::env::temp_dir().join(format!("ferry-scan-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("e");
        std::fs::write(&p, b"").unwrap();
        let h = hash_named(&dir, "e", &mut [0u8; 16]).unwrap();
        assert_eq!(h.xxh64, 0xef46_db37_51d8_e999);
        assert_eq!(h.sha256[..4], [0xe3, 0xb0, 0xc4, 0x42]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn chunked_hash_equals_oneshot() {
        let dir = std::env::temp_dir().join(format!("ferry-scan-chunk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 31 % 251) as u8).collect();
        for i in 0..5 {
            std::fs::write(dir.join(format!("f{i}")), &data[..2000 * i]).unwrap();
        }
        let d = Dir::open(&dir).unwrap();
        let roots = [dir.clone()];
        let root = Root {
            dir: &d,
            roots: &roots,
        };
        let cands: Vec<Candidate> = (0..5)
            .map(|i| classify(&root, OsStr::new(&format!("f{i}"))).unwrap())
            .collect();
        let refs: Vec<&Candidate> = cands.iter().collect();
        let got = hash_files(&root, &refs, 8000);
        for (i, r) in got.into_iter().enumerate() {
            let h = r.unwrap();
            let want = &data[..2000 * i];
            assert_eq!(h.xxh64, twox_hash::XxHash64::oneshot(0, want));
            assert_eq!(h.sha256, <[u8; 32]>::from(Sha256::digest(want)));
            assert_eq!(h.stamp.size, want.len() as u64);
        }
        // A tiny buffer forces many reads of one file.
        let h = hash_file(&root, &cands[4], &mut [0u8; 7]).unwrap();
        assert_eq!(h.xxh64, twox_hash::XxHash64::oneshot(0, &data[..8000]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_swapped_after_classification_is_not_hashed() {
        let dir = std::env::temp_dir().join(format!("ferry-scan-swap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("root")).unwrap();
        std::fs::write(dir.join("root/inside"), b"public").unwrap();
        std::fs::write(dir.join("root/other"), b"other bytes").unwrap();
        std::fs::write(dir.join("secret"), b"secret").unwrap();
        std::os::unix::fs::symlink("inside", dir.join("root/x")).unwrap();
        let d = Dir::open(&dir.join("root")).unwrap();
        let roots = [dir.join("root")];
        let root = Root {
            dir: &d,
            roots: &roots,
        };
        let c = classify(&root, OsStr::new("x")).unwrap();
        // Swapped for a link outside: refused at the open, whatever the classification said.
        std::fs::remove_file(dir.join("root/x")).unwrap();
        std::os::unix::fs::symlink(dir.join("secret"), dir.join("root/x")).unwrap();
        let e = hash_file(&root, &c, &mut [0u8; 64]).unwrap_err();
        assert!(matches!(e, HashError::Io(_)), "{e}");
        // Swapped for a link to another file inside: its stamp is not the classified one.
        std::fs::remove_file(dir.join("root/x")).unwrap();
        std::os::unix::fs::symlink("other", dir.join("root/x")).unwrap();
        let e = hash_file(&root, &c, &mut [0u8; 64]).unwrap_err();
        assert!(matches!(e, HashError::Changed), "{e}");
        // A FIFO swapped in is opened without blocking and refused.
        std::fs::remove_file(dir.join("root/x")).unwrap();
        let fifo = std::ffi::CString::new(dir.join("root/x").as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(hash_file(&root, &c, &mut [0u8; 64]).is_err());
        assert_eq!(
            classify(&root, OsStr::new("x")).unwrap_err(),
            SkipReason::NotRegular
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn skip_reasons_display() {
        assert_eq!(SkipReason::NotUtf8.to_string(), "name is not utf-8");
        assert_eq!(
            SkipReason::SymlinkOutside.to_string(),
            "symlink resolves outside the root"
        );
    }
}
