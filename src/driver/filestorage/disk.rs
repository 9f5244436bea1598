//! The store's file operations that must survive a crash (filestorage.md 7.1, 7.2): JSON files
//! replaced atomically (temporary dotfile in the same folder, fsync, rename, fsync the folder),
//! folders synced after names change, links that never replace, and hashing a part from disk.
//!
//! Out of scope: what the files mean (`store`, `recover`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use twox_hash::XxHash64;

/// Prefix of every temporary the store makes; recovery deletes what is left of them.
pub(super) const TEMP_PREFIX: &str = ".tmp-";

/// Read size when hashing a part from disk.
const HASH_READ: usize = 1 << 20;

/// Replaces `dir/name` with `bytes` atomically and durably: a reader (or a restart) sees the
/// old file or the new one, never a mix.
pub(super) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    write_atomic_unsynced(dir, name, bytes)?;
    sync_dir(dir)
}

/// [`write_atomic`] without the folder's sync: the caller syncs `dir` once for a group of files
/// before anything may depend on them.
pub(super) fn write_atomic_unsynced(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        "{TEMP_PREFIX}{}-{}-{name}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, dir.join(name))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Makes names created, renamed or removed in `dir` durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates an empty marker file (derived data, rebuilt at start: not synced).
pub(super) fn touch(path: &Path) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
        .map(drop)
}

/// Removes a file; a missing one is fine.
pub(super) fn remove_file(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Creates `dir` (0700) if missing.
pub(super) fn ensure_dir(dir: &Path) -> io::Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(0o700)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Running SHA-256 (and xxHash64 when the file will be published: the catalog wants both)
/// over a file's first `upto` bytes.
#[derive(Clone)]
pub(super) struct FileHash {
    pub sha: Sha256,
    pub xxh: Option<XxHash64>,
    pub upto: u64,
}

impl std::fmt::Debug for FileHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileHash(upto {})", self.upto)
    }
}

impl FileHash {
    pub fn new(with_xxh: bool) -> FileHash {
        FileHash {
            sha: Sha256::new(),
            xxh: with_xxh.then(|| XxHash64::with_seed(0)),
            upto: 0,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.sha.update(data);
        if let Some(x) = self.xxh.as_mut() {
            std::hash::Hasher::write(x, data);
        }
        self.upto += data.len() as u64;
    }

    /// Reads `[upto, to)` of `file` into the hashes.
    pub fn read_from(&mut self, file: &File, to: u64) -> io::Result<()> {
        let mut buf = vec![0u8; HASH_READ.min(to.saturating_sub(self.upto) as usize).max(1)];
        while self.upto < to {
            let n = (to - self.upto).min(buf.len() as u64) as usize;
            file.read_exact_at(&mut buf[..n], self.upto)?;
            self.update(&buf[..n]);
        }
        Ok(())
    }

    /// SHA-256 (and xxHash64, if computed) of what was hashed.
    pub fn finish(self) -> ([u8; 32], Option<u64>) {
        (
            self.sha.finalize().into(),
            self.xxh.map(|x| std::hash::Hasher::finish(&x)),
        )
    }
}

/// SHA-256 and xxHash64 of a whole file.
pub(super) fn hash_path(path: &Path) -> io::Result<([u8; 32], u64, u64)> {
    let f = File::open(path)?;
    let size = f.metadata()?.len();
    let mut h = FileHash::new(true);
    h.read_from(&f, size)?;
    let (sha, xxh) = h.finish();
    Ok((sha, xxh.unwrap_or_default(), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_and_leaves_no_temporary() {
        let d = std::env::temp_dir().join(format!("ferry-fs-disk-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        write_atomic(&d, "a.json", b"one").unwrap();
        write_atomic(&d, "a.json", b"two").unwrap();
        assert_eq!(fs::read(d.join("a.json")).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.json"]);
        let (sha, _, size) = hash_path(&d.join("a.json")).unwrap();
        assert_eq!(size, 3);
        assert_eq!(sha, <[u8; 32]>::from(Sha256::digest(b"two")));
        let _ = fs::remove_dir_all(&d);
    }
}
