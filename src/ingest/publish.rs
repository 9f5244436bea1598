//! Publishing a verified, fsynced temporary under a final name without ever replacing a file
//! (jtp.md 5.2 rules 3-4, tej.md 4.1): `renameat2(RENAME_NOREPLACE)`, falling back to
//! `link` + `unlink` on kernels or file systems without it. A name taken by identical content is
//! reused; one taken by different content is kept and the next candidate of the caller's
//! [`Collision`] policy is tried instead.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{hex, Collision, IngestError, Outcome};
use crate::names::{with_number, with_tag};

/// How many `-N` suffixes are tried (after the tagged name, or as `stem-N`) before giving up.
const MAX_SUFFIX: u32 = 999;
/// Read size when comparing with an existing file.
pub(super) const HASH_CHUNK: usize = 1 << 20;

pub(super) struct Published {
    pub path: PathBuf,
    pub name: String,
    pub outcome: Outcome,
}

/// The name to try at `attempt` (0 is the requested name), or None when all are used up.
fn candidate(
    policy: Collision,
    name: &str,
    tag: &str,
    sha256: Option<&[u8; 32]>,
    attempt: u32,
) -> Option<String> {
    match (policy, attempt) {
        (_, 0) => Some(name.to_owned()),
        (Collision::Tagged, 1) => Some(with_tag(name, tag)),
        (Collision::Tagged, n) if n <= MAX_SUFFIX + 1 => {
            Some(with_tag(name, &format!("{tag}-{}", n - 1)))
        }
        (Collision::Numbered, n) if n <= MAX_SUFFIX => Some(with_number(name, n)),
        (Collision::Numbered, n) if n == MAX_SUFFIX + 1 => {
            // Content-addressed last resort, keeping the extension.
            let ext = match name.rfind('.') {
                Some(i) if i > 0 => &name[i..],
                _ => "",
            };
            Some(format!(
                "{}{ext}",
                sha256.map_or_else(|| tag.to_owned(), |s| hex(s))
            ))
        }
        _ => None,
    }
}

/// Moves `src` (a file in the same file system) to `dest/<candidate>`, trying the names `policy`
/// gives in order. On `AlreadyPresent`, `src` is removed. On error, `src` is left where it was.
/// The caller makes the rename durable ([`sync_dir`]) when its [`IngestDir`](super::IngestDir) is.
pub(super) fn publish(
    dest: &Path,
    src: &Path,
    name: &str,
    size: u64,
    sha256: Option<&[u8; 32]>,
    tag: &str,
    policy: Collision,
) -> Result<Published, IngestError> {
    let mut attempt: u32 = 0;
    // Each candidate may be retried a few times if it vanishes while we compare it.
    let mut races = 0;
    loop {
        let Some(candidate) = candidate(policy, name, tag, sha256, attempt) else {
            return Err(IngestError::Io(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("every candidate name for {name:?} is taken"),
            )));
        };
        let dst = dest.join(&candidate);
        match rename_noreplace(src, &dst) {
            Ok(()) => {
                let outcome = if attempt == 0 {
                    Outcome::Created
                } else {
                    Outcome::Renamed
                };
                return Ok(Published {
                    path: dst,
                    name: candidate,
                    outcome,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e.into()),
        }
        match has_content(&dst, src, size) {
            Ok(true) => {
                fs::remove_file(src)?;
                return Ok(Published {
                    path: dst,
                    name: candidate,
                    outcome: Outcome::AlreadyPresent,
                });
            }
            Ok(false) => attempt += 1,
            // Removed between our rename and our look: try the same name again.
            Err(e) if e.kind() == io::ErrorKind::NotFound && races < 8 => races += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

/// `renameat2(src, dst, RENAME_NOREPLACE)`, or `link` + `unlink` where unsupported. Never replaces
/// `dst`; an existing `dst` (even a dangling symlink) gives `AlreadyExists`.
pub(super) fn rename_noreplace(src: &Path, dst: &Path) -> io::Result<()> {
    let s = CString::new(src.as_os_str().as_bytes())?;
    let d = CString::new(dst.as_os_str().as_bytes())?;
    // SAFETY: both pointers are valid NUL-terminated strings that outlive the call; renameat2
    // reads them and touches no other memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            s.as_ptr(),
            libc::AT_FDCWD,
            d.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        // Old kernel, or a file system that does not implement the flag.
        Some(libc::ENOSYS) | Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => {
            fs::hard_link(src, dst)?;
            fs::remove_file(src)
        }
        _ => Err(e),
    }
}

/// Makes renames into and out of `dir` durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// True if `path` is a regular file (not followed through a symlink) of `size` bytes with the
/// same bytes as `ours` (compared directly, so no hash of ours is needed).
fn has_content(path: &Path, ours: &Path, size: u64) -> io::Result<bool> {
    let meta = fs::symlink_metadata(path)?;
    if !meta.is_file() || meta.len() != size {
        return Ok(false);
    }
    let theirs = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let ours = File::open(ours)?;
    let chunk = HASH_CHUNK.min(size as usize).max(1);
    let (mut a, mut b) = (vec![0u8; chunk], vec![0u8; chunk]);
    let mut off = 0u64;
    while off < size {
        let n = (size - off).min(chunk as u64) as usize;
        // Either file ending early (it shrank meanwhile) means different content.
        match (
            theirs.read_exact_at(&mut a[..n], off),
            ours.read_exact_at(&mut b[..n], off),
        ) {
            (Ok(()), Ok(())) => {}
            (Err(e), _) | (_, Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Ok(false)
            }
            (Err(e), _) | (_, Err(e)) => return Err(e),
        }
        if a[..n] != b[..n] {
            return Ok(false);
        }
        off += n as u64;
    }
    // Grown meanwhile: not the same file any more.
    Ok(!has_more(&theirs, size)?)
}

/// True if `path` is a regular file (not followed through a symlink) holding exactly `data`.
/// A missing file is `Ok(false)`.
pub(super) fn holds_bytes(path: &Path, data: &[u8]) -> io::Result<bool> {
    // Look before opening: a FIFO or device under the name is never opened.
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_file() && m.len() == data.len() as u64 => {}
        _ => return Ok(false),
    }
    let theirs = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        // Missing, a symlink (ELOOP), a folder we cannot open: not our bytes.
        Err(_) => return Ok(false),
    };
    // The same checks on what was opened: the name may have been replaced since the lstat.
    let meta = theirs.metadata()?;
    if !meta.is_file() || meta.len() != data.len() as u64 {
        return Ok(false);
    }
    // A file that grew meanwhile does not match: one byte past the end is looked for.
    // The buffer is reused by the thread (callers pass at most a stream's 256 KiB buffer).
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with_borrow_mut(|buf| {
        buf.resize(data.len(), 0);
        match theirs.read_exact_at(buf, 0) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(e),
        }
        Ok(*buf == *data && !has_more(&theirs, data.len() as u64)?)
    })
}

/// Whether `f` holds a byte at `len`: a file that grew past the length it was compared at.
fn has_more(f: &File, len: u64) -> io::Result<bool> {
    match f.read_exact_at(&mut [0u8; 1], len) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_dir::{list, TempDir};
    use super::*;

    fn sha(data: &[u8]) -> [u8; 32] {
        <sha2::Sha256 as sha2::Digest>::digest(data).into()
    }

    #[test]
    fn rename_never_replaces() {
        let t = TempDir::new("noreplace");
        fs::write(t.0.join("a"), b"new").unwrap();
        fs::write(t.0.join("b"), b"old").unwrap();
        let e = rename_noreplace(&t.0.join("a"), &t.0.join("b")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(t.0.join("b")).unwrap(), b"old");
        // A dangling symlink counts as taken too.
        std::os::unix::fs::symlink(t.0.join("nowhere"), t.0.join("c")).unwrap();
        let e = rename_noreplace(&t.0.join("a"), &t.0.join("c")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        rename_noreplace(&t.0.join("a"), &t.0.join("d")).unwrap();
        assert_eq!(list(&t.0), ["b", "c", "d"]);
    }

    #[test]
    fn suffixes_after_tag() {
        let t = TempDir::new("suffix");
        fs::write(t.0.join("x.png"), b"one").unwrap();
        fs::write(t.0.join("x.abcd0123.png"), b"two").unwrap();
        fs::write(t.0.join("x.abcd0123-1.png"), b"three").unwrap();
        let src = t.0.join(".tmp");
        fs::write(&src, b"four").unwrap();
        let p = publish(
            &t.0,
            &src,
            "x.png",
            4,
            Some(&sha(b"four")),
            "abcd0123",
            Collision::Tagged,
        )
        .unwrap();
        assert_eq!(p.name, "x.abcd0123-2.png");
        assert_eq!(p.outcome, Outcome::Renamed);
        assert_eq!(fs::read(&p.path).unwrap(), b"four");
        assert!(!src.exists());
    }

    #[test]
    fn identical_tagged_copy_is_reused() {
        let t = TempDir::new("reuse");
        fs::write(t.0.join("x.png"), b"one").unwrap();
        fs::write(t.0.join("x.abcd0123.png"), b"four").unwrap();
        let src = t.0.join(".tmp");
        fs::write(&src, b"four").unwrap();
        let p = publish(
            &t.0,
            &src,
            "x.png",
            4,
            Some(&sha(b"four")),
            "abcd0123",
            Collision::Tagged,
        )
        .unwrap();
        assert_eq!(p.name, "x.abcd0123.png");
        assert_eq!(p.outcome, Outcome::AlreadyPresent);
        assert_eq!(list(&t.0), ["x.abcd0123.png", "x.png"]);
    }

    #[test]
    fn symlink_to_identical_file_is_not_reused() {
        let t = TempDir::new("symlink");
        fs::write(t.0.join("real"), b"data").unwrap();
        std::os::unix::fs::symlink(t.0.join("real"), t.0.join("x.bin")).unwrap();
        let src = t.0.join(".tmp");
        fs::write(&src, b"data").unwrap();
        let p = publish(
            &t.0,
            &src,
            "x.bin",
            4,
            Some(&sha(b"data")),
            "0000ffff",
            Collision::Tagged,
        )
        .unwrap();
        assert_eq!(p.outcome, Outcome::Renamed);
        assert_eq!(p.name, "x.0000ffff.bin");
    }

    #[test]
    fn candidates_per_policy() {
        let h = [0x5a; 32];
        let c = |p, n| candidate(p, "a.png", "01234567", Some(&h), n);
        assert_eq!(c(Collision::Tagged, 0).unwrap(), "a.png");
        assert_eq!(c(Collision::Tagged, 1).unwrap(), "a.01234567.png");
        assert_eq!(c(Collision::Tagged, 2).unwrap(), "a.01234567-1.png");
        assert_eq!(c(Collision::Tagged, 1000).unwrap(), "a.01234567-999.png");
        assert_eq!(c(Collision::Tagged, 1001), None);
        assert_eq!(c(Collision::Numbered, 0).unwrap(), "a.png");
        assert_eq!(c(Collision::Numbered, 1).unwrap(), "a-1.png");
        assert_eq!(c(Collision::Numbered, 999).unwrap(), "a-999.png");
        assert_eq!(
            c(Collision::Numbered, 1000).unwrap(),
            "5a".repeat(32) + ".png"
        );
        assert_eq!(c(Collision::Numbered, 1001), None);
        assert_eq!(
            candidate(Collision::Numbered, "README", "", Some(&h), 1000).unwrap(),
            "5a".repeat(32)
        );
    }

    #[test]
    fn numbered_policy_publishes_stem_n() {
        let t = TempDir::new("numbered");
        fs::write(t.0.join("r.txt"), b"one").unwrap();
        fs::write(t.0.join("r-1.txt"), b"two").unwrap();
        let src = t.0.join(".tmp");
        fs::write(&src, b"three").unwrap();
        let p = publish(
            &t.0,
            &src,
            "r.txt",
            5,
            Some(&sha(b"three")),
            "x",
            Collision::Numbered,
        )
        .unwrap();
        assert_eq!(p.name, "r-2.txt");
        assert_eq!(p.outcome, Outcome::Renamed);
    }
}
