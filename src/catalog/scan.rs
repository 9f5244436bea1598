//! Listing the served folder and hashing files: the blocking I/O half of the catalog.
//!
//! [`list`] reads the root once (not recursively) and sorts every name into a servable
//! [`Candidate`] or a [`SkipReason`]. [`hash_files`] computes xxHash64 (seed 0) and SHA-256 of
//! many files on up to `available_parallelism()` threads, each file in one pass of 1 MiB
//! `read(2)` calls. Files are never read through a mapping: a file truncated while we hash it
//! must give a short read, not SIGBUS.
//!
//! Out of scope: deciding what to re-hash (the index and the previous snapshot do that, in
//! `mod.rs`) and any protocol-specific filtering (extensions, size limits).

use super::mapped::FileStamp;
use sha2::{Digest, Sha256};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::hash::Hasher as _;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
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
    /// A symlink whose canonical target lies outside the root.
    SymlinkOutside,
    /// A symlink whose canonical target inside the root has a hidden component (e.g. `.ferry/`).
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
    /// `root.join(disk_name)`.
    pub path: PathBuf,
    /// Stamp of the file (of the target, for a symlink).
    pub stamp: FileStamp,
}

/// Everything one pass over the root found.
#[derive(Debug, Default)]
pub struct Listing {
    pub files: Vec<Candidate>,
    /// Excluded names, except the state folder itself.
    pub skipped: Vec<(OsString, SkipReason)>,
}

/// Reads `root` (whose canonical form is `canon_root`) once.
pub fn list(root: &Path, canon_root: &Path) -> io::Result<Listing> {
    let mut listing = Listing::default();
    for dirent in std::fs::read_dir(root)? {
        let dirent = dirent?;
        let disk_name = dirent.file_name();
        if disk_name == STATE_DIR {
            continue;
        }
        match classify(root, canon_root, &disk_name) {
            Ok(c) => listing.files.push(c),
            Err(reason) => listing.skipped.push((disk_name, reason)),
        }
    }
    Ok(listing)
}

/// Decides whether `root/disk_name` belongs in the catalog.
pub fn classify(
    root: &Path,
    canon_root: &Path,
    disk_name: &OsStr,
) -> Result<Candidate, SkipReason> {
    if disk_name.as_bytes().first() == Some(&b'.') {
        return Err(SkipReason::Hidden);
    }
    let Some(utf8) = disk_name.to_str() else {
        return Err(SkipReason::NotUtf8);
    };
    let path = root.join(disk_name);
    let lmeta = std::fs::symlink_metadata(&path).map_err(|e| SkipReason::Unstatable(e.kind()))?;
    let meta = if lmeta.file_type().is_symlink() {
        let target = std::fs::canonicalize(&path).map_err(|_| SkipReason::BrokenSymlink)?;
        let rel = target
            .strip_prefix(canon_root)
            .map_err(|_| SkipReason::SymlinkOutside)?;
        let hidden = rel.components().any(|c| match c {
            Component::Normal(part) => part.as_bytes().first() == Some(&b'.'),
            _ => true,
        });
        if hidden {
            return Err(SkipReason::SymlinkToHidden);
        }
        std::fs::metadata(&path).map_err(|e| SkipReason::Unstatable(e.kind()))?
    } else {
        lmeta
    };
    if !meta.is_file() {
        return Err(SkipReason::NotRegular);
    }
    Ok(Candidate {
        disk_name: disk_name.to_owned(),
        name: utf8.nfc().collect(),
        path,
        stamp: FileStamp::from_metadata(&meta),
    })
}

/// Hashes of one file and the stamp they belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hashes {
    /// `fstat` on the descriptor that was read, equal before and after reading.
    pub stamp: FileStamp,
    pub xxh64: u64,
    pub sha256: [u8; 32],
}

/// Why a file could not be hashed.
#[derive(Debug)]
pub enum HashError {
    Io(io::Error),
    /// The file changed while it was read (stamp moved, or size and bytes read disagree).
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

/// Hashes one file in one pass, using `buf` as the read buffer.
pub fn hash_file(path: &Path, buf: &mut [u8]) -> Result<Hashes, HashError> {
    let mut file = File::open(path).map_err(HashError::Io)?;
    let before = file.metadata().map_err(HashError::Io)?;
    if !before.is_file() {
        return Err(HashError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    let stamp = FileStamp::from_metadata(&before);
    let mut xxh = twox_hash::XxHash64::with_seed(0);
    let mut sha = Sha256::new();
    let mut total = 0u64;
    loop {
        let n = match file.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(HashError::Io(e)),
        };
        xxh.write(&buf[..n]);
        sha.update(&buf[..n]);
        total += n as u64;
        if total > stamp.size {
            return Err(HashError::Changed);
        }
    }
    let after = file.metadata().map_err(HashError::Io)?;
    if total != stamp.size || FileStamp::from_metadata(&after) != stamp {
        return Err(HashError::Changed);
    }
    Ok(Hashes {
        stamp,
        xxh64: xxh.finish(),
        sha256: sha.finalize().into(),
    })
}

/// Hashes every path, on up to `available_parallelism()` threads; results are in input order.
/// `size_hint` is the largest size expected: read buffers are no larger than it needs (a batch
/// of 1 KiB files must not zero a 1 MiB buffer per call).
pub fn hash_files(paths: &[&Path], size_hint: u64) -> Vec<Result<Hashes, HashError>> {
    if paths.is_empty() {
        return Vec::new();
    }
    let buf_len = usize::try_from(size_hint)
        .unwrap_or(HASH_CHUNK)
        .clamp(MIN_HASH_BUFFER, HASH_CHUNK);
    let threads = parallelism().min(paths.len());
    if threads <= 1 {
        let mut buf = vec![0u8; buf_len];
        return paths.iter().map(|p| hash_file(p, &mut buf)).collect();
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
                        done.push((i, hash_file(path, &mut buf)));
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

    #[test]
    fn empty_file_vectors() {
        let dir = std::env::temp_dir().join(format!("ferry-scan-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("e");
        std::fs::write(&p, b"").unwrap();
        let h = hash_file(&p, &mut [0u8; 16]).unwrap();
        assert_eq!(h.xxh64, 0xef46_db37_51d8_e999);
        assert_eq!(h.sha256[..4], [0xe3, 0xb0, 0xc4, 0x42]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn chunked_hash_equals_oneshot() {
        let dir = std::env::temp_dir().join(format!("ferry-scan-chunk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let paths: Vec<PathBuf> = (0..5)
            .map(|i| {
                let p = dir.join(format!("f{i}"));
                std::fs::write(&p, &data[..2000 * i]).unwrap();
                p
            })
            .collect();
        let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
        let got = hash_files(&refs, 8000);
        for (i, r) in got.into_iter().enumerate() {
            let h = r.unwrap();
            let want = &data[..2000 * i];
            assert_eq!(h.xxh64, twox_hash::XxHash64::oneshot(0, want));
            assert_eq!(h.sha256, <[u8; 32]>::from(Sha256::digest(want)));
            assert_eq!(h.stamp.size, want.len() as u64);
        }
        // A tiny buffer forces many reads of one file.
        let h = hash_file(&paths[4], &mut [0u8; 7]).unwrap();
        assert_eq!(h.xxh64, twox_hash::XxHash64::oneshot(0, &data[..8000]));
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
