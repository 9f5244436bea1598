//! The catalog's memory mapping, its one `unsafe` data structure: a read-only mapping of a
//! served file whose bytes only the kernel ever reads. (The catalog's other `unsafe` blocks
//! are plain system calls in `inotify.rs`.)
//!
//! A [`MappedFile`] owns an open [`File`], the [`FileStamp`] taken by `fstat` on that descriptor
//! when it was opened, and (for non-empty files, once [`MappedFile::send_to`] first needs it) a
//! `PROT_READ`, `MAP_SHARED` mapping of the whole file. The mapping lets a driver hand any byte
//! range of the file to `send(2)` without copying it through userspace, which is what makes
//! serving large files from the catalog cheap; small ranges are read with `pread(2)` by the
//! drivers, so a file only ever read that way (every small image) costs no mapping at all: an
//! open is `openat` + `fstat`, and its end a `close`.
//!
//! Out of scope: hashing (the catalog reads files with `read`, never through a mapping) and
//! deciding *what* to send (the protocol machines do that).
//!
//! There is deliberately no `Deref` and no `&[u8]` view of the mapping: see the `SAFETY`
//! comment on [`MappedFile::open`] for why that is the whole soundness argument.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::OnceLock;

/// What identifies one version of a file on disk: if any field differs, the bytes may differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileStamp {
    /// Device id of the file system holding the inode.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i128,
    /// Last status change time, nanoseconds since the Unix epoch.
    pub ctime_ns: i128,
}

impl FileStamp {
    /// Takes the stamp fields from `stat` metadata (follow symlinks before calling this if the
    /// stamp must describe the target).
    pub fn from_metadata(m: &std::fs::Metadata) -> FileStamp {
        FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        }
    }
}

impl FileStamp {
    /// Takes the stamp fields from a [`Stat`](crate::dir::Stat) (of a descriptor, or of a name
    /// not followed through a symlink).
    pub fn from_stat(st: &crate::dir::Stat) -> FileStamp {
        FileStamp {
            dev: st.dev(),
            ino: st.ino(),
            size: st.size(),
            mtime_ns: st.mtime_ns(),
            ctime_ns: st.ctime_ns(),
        }
    }
}

/// An open file plus a read-only mapping of it that userspace never dereferences.
pub struct MappedFile {
    file: File,
    /// Start of the mapping, made by the first [`send_to`](Self::send_to) of a non-empty range
    /// (mmap refuses length 0), or the errno that making it gave.
    map: OnceLock<Result<NonNull<u8>, i32>>,
    /// Length of the file at open (and of the mapping), equal to `stamp.size`.
    len: u64,
    stamp: FileStamp,
}

// SAFETY: the mapping is a plain address range owned by this value; it is never dereferenced in
// userspace (only passed to send(2)/write(2)), never written, and unmapped only in Drop, which
// needs `&mut self`. Sharing or moving the address between threads therefore cannot race.
unsafe impl Send for MappedFile {}
// SAFETY: see the `Send` impl; every `&self` method is either a syscall on the fd or a syscall
// that reads the mapping from kernel space, both of which are thread-safe.
unsafe impl Sync for MappedFile {}

impl std::fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedFile")
            .field("fd", &self.file.as_raw_fd())
            .field("len", &self.len)
            .field("stamp", &self.stamp)
            .finish()
    }
}

impl MappedFile {
    /// Opens `path` read-only (`O_NONBLOCK`: a FIFO under the name is refused at once rather
    /// than waited on) and maps it as [`from_file`](Self::from_file) does. The path is
    /// followed as given: served files are opened through
    /// [`Entry::open`](super::Entry::open), beneath the served folder, instead.
    pub fn open(path: &Path) -> io::Result<MappedFile> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(path)?;
        MappedFile::from_file(file)
    }

    /// Takes the stamp of an open file with `fstat` on its descriptor and requires a regular
    /// file. The whole file is mapped when [`send_to`](Self::send_to) first needs it.
    pub fn from_file(file: File) -> io::Result<MappedFile> {
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        let stamp = FileStamp::from_metadata(&meta);
        Ok(MappedFile {
            file,
            map: OnceLock::new(),
            len: stamp.size,
            stamp,
        })
    }

    /// The mapping, made on first use (callers never ask for an empty file's).
    fn mapping(&self) -> io::Result<NonNull<u8>> {
        let made = self.map.get_or_init(|| {
            self.map_now()
                .map_err(|e| e.raw_os_error().unwrap_or(libc::ENOMEM))
        });
        made.map_err(io::Error::from_raw_os_error)
    }

    /// Maps the whole file (`len > 0`).
    fn map_now(&self) -> io::Result<NonNull<u8>> {
        let map_len = usize::try_from(self.len)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let file = &self.file;
        // SAFETY: the contract that makes this mapping sound is that userspace code NEVER
        // dereferences the mapped bytes. Another process may truncate or rewrite the file at any
        // time; touching a page past the new end of file would raise SIGBUS and kill the server,
        // and reading rewritten pages would be a data race on memory we do not control. Nothing
        // in this module hands out a pointer, slice or `Deref` to the mapping, and the catalog
        // hashes files with read(2), not through a mapping. The only consumer is the kernel, via
        // send(2)/write(2) from the mapped address in `send_to`; a fault there returns EFAULT
        // (an io::Error) or a short count instead of a signal. The arguments themselves are
        // valid: a fresh address chosen by the kernel, a non-zero length equal to the file size
        // at open, PROT_READ on a descriptor opened read-only, offset 0.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))
    }

    /// Whether the file has been mapped (by a `send_to`).
    #[cfg(test)]
    pub(crate) fn is_mapped(&self) -> bool {
        matches!(self.map.get(), Some(Ok(_)))
    }

    /// Size of the file when it was opened (and of the mapping).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for a zero-length file, which has no mapping.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The `fstat` stamp taken on the descriptor at open.
    pub fn stamp(&self) -> FileStamp {
        self.stamp
    }

    /// Writes up to `len` bytes at `offset` of the mapping to the socket/file descriptor `fd` with
    /// one send(2) (MSG_NOSIGNAL; fall back to write(2) on ENOTSOCK). Returns bytes written.
    /// Err(EFAULT) if the pages are gone. Honors the fd's SO_SNDTIMEO (EAGAIN -> WouldBlock/TimedOut error).
    ///
    /// The range is clipped to the size at open; `offset` past the end is `InvalidInput`, and a
    /// request for 0 bytes (or at the end) returns `Ok(0)` without a syscall. EINTR is retried.
    pub fn send_to(&self, fd: RawFd, offset: u64, len: usize) -> io::Result<usize> {
        if offset > self.len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "offset past the end of the mapped file",
            ));
        }
        let avail = self.len - offset;
        let n = len.min(usize::try_from(avail).unwrap_or(usize::MAX));
        if n == 0 {
            return Ok(0);
        }
        let map = self.mapping()?;
        // `offset < self.len`, which fits in usize because the mapping exists.
        let start = offset as usize;
        // SAFETY: `start + n <= self.len`, so the address stays inside the mapping (no
        // out-of-bounds pointer arithmetic). The pointer is only handed to the kernel; see the
        // contract on `open`.
        let addr = unsafe { map.as_ptr().add(start) }
            .cast::<libc::c_void>()
            .cast_const();
        let mut use_write = false;
        loop {
            // SAFETY: `addr..addr+n` lies inside our live mapping; the kernel copies from it and
            // reports a vanished page as EFAULT, never touching memory outside the range.
            let rc = unsafe {
                if use_write {
                    libc::write(fd, addr, n)
                } else {
                    libc::send(fd, addr, n, libc::MSG_NOSIGNAL)
                }
            };
            if rc >= 0 {
                return Ok(rc as usize);
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ENOTSOCK) if !use_write => use_write = true,
                _ => return Err(err),
            }
        }
    }

    /// pread(2) from the file into buf (short read at EOF possible; a truncated file gives 0).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.file.read_at(buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    /// Fills `buf` with the file's bytes at `offset` (pread(2), retried on EINTR and short
    /// reads: std's `FileExt::read_exact_at`). A file that ends first gives `UnexpectedEof`:
    /// it shrank, or the range was never inside it.
    pub fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// fstat on the open fd now equals the stamp taken at open (size, mtime, ctime, ino).
    /// A failing fstat counts as changed.
    ///
    /// One exception: unlinking moves an inode's ctime but not its bytes, so an inode with no
    /// names left (`nlink == 0`, e.g. replaced by rename) whose dev, ino, size and mtime still
    /// match counts as unchanged. That is what lets a replaced file keep serving its old bytes
    /// until the next rescan; nobody can open it by name to rewrite it any more.
    pub fn is_unchanged(&self) -> bool {
        match self.file.metadata() {
            Ok(m) => {
                let now = FileStamp::from_metadata(&m);
                now == self.stamp
                    || (m.nlink() == 0
                        && FileStamp {
                            ctime_ns: self.stamp.ctime_ns,
                            ..now
                        } == self.stamp)
            }
            Err(_) => false,
        }
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        if let Some(Ok(map)) = self.map.take() {
            // SAFETY: `map` and `len` are exactly what mmap returned and was given in `map_now`,
            // and no reference into the mapping can outlive `self` (none is ever created).
            unsafe {
                libc::munmap(map.as_ptr().cast(), self.len as usize);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::FromRawFd;
    use std::path::PathBuf;

    fn temp_file(tag: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ferry-mapped-{}-{}-{:?}",
            tag,
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f.bin");
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn cleanup(path: &Path) {
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// A connected pair of Unix stream sockets as Files (closed on drop).
    fn socketpair() -> (File, File) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors socketpair writes.
        let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) };
        assert_eq!(rc, 0);
        // SAFETY: both descriptors were just created and are owned by nothing else.
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
    }

    fn pipe() -> (File, File) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe writes.
        let rc = unsafe { libc::pipe(fds.as_mut_ptr()) };
        assert_eq!(rc, 0);
        // SAFETY: both descriptors were just created and are owned by nothing else.
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
    }

    #[test]
    fn sends_ranges_over_a_socket() {
        let path = temp_file("send", b"hello, mapped world");
        let m = MappedFile::open(&path).unwrap();
        assert_eq!(m.len(), 19);
        assert!(!m.is_empty());
        // Reads go through pread: no mapping until a send needs one.
        let mut buf = [0u8; 5];
        m.read_exact_at(0, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        assert!(!m.is_mapped());
        let (a, mut b) = socketpair();
        assert_eq!(m.send_to(a.as_raw_fd(), 7, 6).unwrap(), 6);
        assert!(m.is_mapped());
        // Clipped at the end of the file.
        assert_eq!(m.send_to(a.as_raw_fd(), 14, 100).unwrap(), 5);
        assert_eq!(m.send_to(a.as_raw_fd(), 19, 100).unwrap(), 0);
        assert_eq!(
            m.send_to(a.as_raw_fd(), 20, 1).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        drop(a);
        let mut got = Vec::new();
        b.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"mappedworld");
        cleanup(&path);
    }

    #[test]
    fn falls_back_to_write_on_a_pipe() {
        let path = temp_file("pipe", b"abcdef");
        let m = MappedFile::open(&path).unwrap();
        let (mut r, w) = pipe();
        assert_eq!(m.send_to(w.as_raw_fd(), 1, 3).unwrap(), 3);
        drop(w);
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"bcd");
        cleanup(&path);
    }

    #[test]
    fn truncated_file_gives_efault_not_sigbus() {
        let data = vec![0x5a; 3 * 4096 + 17];
        let path = temp_file("trunc", &data);
        let m = MappedFile::open(&path).unwrap();
        assert!(m.is_unchanged());
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        assert!(!m.is_unchanged());
        let (a, _b) = socketpair();
        let err = m.send_to(a.as_raw_fd(), 0, data.len()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EFAULT), "{err}");
        let (_r, w) = pipe();
        let err = m.send_to(w.as_raw_fd(), 4096, 100).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EFAULT), "{err}");
        let mut buf = [0u8; 8];
        assert_eq!(m.read_at(0, &mut buf).unwrap(), 0);
        cleanup(&path);
    }

    #[test]
    fn in_place_rewrite_is_detected() {
        let path = temp_file("rewrite", b"first version");
        let m = MappedFile::open(&path).unwrap();
        let mut buf = [0u8; 5];
        assert_eq!(m.read_at(6, &mut buf).unwrap(), 5);
        assert_eq!(&buf, b"versi");
        // Same size, new bytes. File times use the kernel's coarse clock, so wait for it to
        // tick before writing or the stamp could legitimately stay equal.
        std::thread::sleep(std::time::Duration::from_millis(30));
        let mut f = File::options().write(true).open(&path).unwrap();
        f.write_all(b"FIRST").unwrap();
        drop(f);
        assert!(!m.is_unchanged());
        cleanup(&path);
    }

    #[test]
    fn replaced_by_rename_stays_unchanged() {
        let path = temp_file("rename", b"old bytes");
        let m = MappedFile::open(&path).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, b"new bytes!").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert!(m.is_unchanged());
        let mut buf = [0u8; 16];
        let n = m.read_at(0, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"old bytes");
        let (a, mut b) = socketpair();
        assert_eq!(m.send_to(a.as_raw_fd(), 0, 100).unwrap(), 9);
        drop(a);
        let mut got = Vec::new();
        b.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"old bytes");
        cleanup(&path);
    }

    #[test]
    fn empty_file_has_no_mapping() {
        let path = temp_file("empty", b"");
        let m = MappedFile::open(&path).unwrap();
        assert!(m.is_empty());
        assert_eq!(m.len(), 0);
        assert_eq!(m.stamp().size, 0);
        let (a, _b) = socketpair();
        assert_eq!(m.send_to(a.as_raw_fd(), 0, 10).unwrap(), 0);
        assert!(m.is_unchanged());
        assert!(!m.is_mapped());
        cleanup(&path);
    }

    #[test]
    fn stamp_matches_metadata() {
        let path = temp_file("stamp", b"xyz");
        let m = MappedFile::open(&path).unwrap();
        let s = FileStamp::from_metadata(&std::fs::metadata(&path).unwrap());
        assert_eq!(m.stamp(), s);
        assert_eq!(s.size, 3);
        cleanup(&path);
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let path = temp_file("fifo", b"");
        let fifo = path.with_file_name("pipe");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = MappedFile::open(&fifo).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        cleanup(&path);
    }

    /// The unlinked-inode exception is for unlinked inodes only: a file still named whose
    /// ctime alone moved (a new hard link, a chmod) may have been rewritten through any name.
    #[test]
    fn a_named_file_whose_ctime_moved_is_changed() {
        let path = temp_file("ctime", b"same bytes");
        let m = MappedFile::open(&path).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(30));
        std::fs::hard_link(&path, path.with_extension("link")).unwrap();
        assert!(!m.is_unchanged());
        cleanup(&path);
    }

    #[test]
    fn drop_unmaps() {
        let path = temp_file("unmap", b"mapped until dropped");
        let m = MappedFile::open(&path).unwrap();
        let (a, _b) = socketpair();
        assert_eq!(m.send_to(a.as_raw_fd(), 0, 6).unwrap(), 6);
        assert!(m.is_mapped());
        let name = path.to_str().unwrap().to_owned();
        let maps = || std::fs::read_to_string("/proc/self/maps").unwrap();
        assert!(maps().contains(&name));
        drop(m);
        assert!(!maps().contains(&name), "still mapped after drop");
        cleanup(&path);
    }

    #[test]
    fn debug_shows_descriptor_length_and_stamp() {
        let path = temp_file("debug", b"abc");
        let m = MappedFile::open(&path).unwrap();
        let text = format!("{m:?}");
        assert!(text.starts_with("MappedFile { fd: "), "{text}");
        assert!(text.contains(", len: 3, stamp: "), "{text}");
        cleanup(&path);
    }

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<MappedFile>();
    }
}
