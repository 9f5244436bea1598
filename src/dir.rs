//! Folders opened once, and the files in them opened so that nobody racing ferry can redirect
//! an open (house style 27): every name is resolved relative to a directory descriptor, never
//! by a path string, and a symlink is followed only by the resolver here, on purpose.
//!
//! A [`Dir`] is an open descriptor of a folder plus its path (kept for messages only). What
//! it offers, and the rule behind each:
//!
//! - **Served files** ([`Dir::open_beneath`]): a name in the served folder is opened
//!   read-only with `O_NOFOLLOW | O_NONBLOCK` (a FIFO swapped in opens at once instead of
//!   blocking a worker; the caller checks the type on the opened descriptor). A name that is a
//!   symlink is resolved here, component by component, beneath the folder's descriptor: every
//!   component is opened `O_PATH | O_NOFOLLOW`, a link's text is read from the very link that
//!   was opened (`readlinkat(fd, "")`), `..` pops a folder this resolver itself went through
//!   (never the file system's `..`), an absolute target must begin with the folder's own path.
//!   A link that leads out of the folder, or through a name starting with `.` (such as
//!   `.ferry/`), is refused. Nothing here ever lets the kernel follow a link, so magic links
//!   (`/proc/self/fd/N`) are never followed either.
//!
//!   ```text
//!   openat(root, name, O_NOFOLLOW|O_NONBLOCK) --ok--> the file (type checked by the caller)
//!        | ELOOP: name is a link
//!        v
//!   todo = [name]; folders = []          (folders: O_PATH fds below the root, the path so far)
//!   pop a component:  "" or "."  --> skip
//!                     ".."       --> pop a folder (none left: Outside)
//!                     ".x"       --> Hidden
//!                     last one   --> openat(folder, c, O_NOFOLLOW|O_NONBLOCK) --ok--> the file
//!                     otherwise  --> openat(folder, c, O_PATH|O_NOFOLLOW), fstat:
//!                         folder --> push it
//!                         link   --> readlinkat(fd, ""); absolute: strip the root's path
//!                                    (else Outside) and start from the root; push its
//!                                    components onto todo (at most 40 links: Broken)
//!                         (at most 64 folders deep: Broken)
//!                         other  --> Broken (not a folder)
//!   ```
//!
//!   `openat2(RESOLVE_BENEATH)` is not used: it refuses absolute links (which the catalog has
//!   always served when they point inside the folder) and cannot refuse links into `.ferry/`,
//!   so a resolver of our own was needed anyway; having exactly one means the same code runs,
//!   and is tested, on every kernel.
//!
//! - **State and working folders** ([`Dir::private_subdir`]): `.ferry/` and everything under
//!   it, and the working folders of ingest, are opened with `O_NOFOLLOW | O_DIRECTORY` and must
//!   belong to the user running ferry and be writable by nobody else ([`check_private`]);
//!   otherwise ferry stops with a message saying what to do. Inside such a folder nobody else
//!   can plant a file or a link.
//! - **State files**: new ones are created with `O_CREAT | O_EXCL | O_NOFOLLOW`
//!   ([`Dir::create_new`]); files that are reopened (the journal, resumable parts and bitmaps)
//!   with `O_NOFOLLOW` and checked on the descriptor: a regular file, ours, one link
//!   ([`Dir::open_state_file`]).
//! - Renames, links and removals take descriptors on both sides (`renameat2`, `linkat`,
//!   `unlinkat`).
//!
//! Out of scope: what is served or written (the catalog and ingest decide), and the folders'
//! own paths, which the user named and which are opened once, following links, at start.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

#[cfg(test)]
thread_local! {
    /// The inodes of the folders this thread synced with [`Dir::sync`], for tests of what a
    /// commit makes durable (a missing fsync shows nowhere short of a power cut).
    pub(crate) static SYNCED: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Most symlinks one resolution follows (Linux's own limit is 40 as well).
pub const MAX_LINKS: u32 = 40;
/// Most folders below the root one resolution may stand in at once (each holds an `O_PATH`
/// descriptor until the resolution ends): deeper is refused as a broken link.
pub const MAX_DEPTH: usize = 64;

/// Flags of every read-only open of a served file.
const READ_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;

/// An open folder. Cheap to share as `Arc<Dir>`; every method is a system call on its
/// descriptor, so any number of threads may use one at once.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    /// The folder's path when it was opened: for messages, never to reach a file.
    path: PathBuf,
}

/// `stat` of a descriptor or of a name, never through a symlink.
#[derive(Clone, Copy)]
pub struct Stat(libc::stat);

impl std::fmt::Debug for Stat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stat")
            .field("mode", &format_args!("{:o}", self.0.st_mode))
            .field("dev", &self.dev())
            .field("ino", &self.ino())
            .field("size", &self.size())
            .finish_non_exhaustive()
    }
}

// The stat fields' integer types differ between targets.
#[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
impl Stat {
    fn kind(&self) -> libc::mode_t {
        self.0.st_mode & libc::S_IFMT
    }
    pub fn is_file(&self) -> bool {
        self.kind() == libc::S_IFREG
    }
    pub fn is_dir(&self) -> bool {
        self.kind() == libc::S_IFDIR
    }
    pub fn is_symlink(&self) -> bool {
        self.kind() == libc::S_IFLNK
    }
    pub fn dev(&self) -> u64 {
        self.0.st_dev as u64
    }
    pub fn ino(&self) -> u64 {
        self.0.st_ino as u64
    }
    pub fn size(&self) -> u64 {
        self.0.st_size as u64
    }
    pub fn nlink(&self) -> u64 {
        self.0.st_nlink as u64
    }
    pub fn uid(&self) -> u32 {
        self.0.st_uid as u32
    }
    /// Permission bits (`0o7777`).
    pub fn mode(&self) -> u32 {
        (self.0.st_mode & 0o7777) as u32
    }
    /// Last modification, nanoseconds since the Unix epoch.
    pub fn mtime_ns(&self) -> i128 {
        i128::from(self.0.st_mtime as i64) * 1_000_000_000 + i128::from(self.0.st_mtime_nsec as i64)
    }
    /// Last status change, nanoseconds since the Unix epoch.
    pub fn ctime_ns(&self) -> i128 {
        i128::from(self.0.st_ctime as i64) * 1_000_000_000 + i128::from(self.0.st_ctime_nsec as i64)
    }
}

/// `fstat(2)` of any descriptor.
pub fn fstat(fd: RawFd) -> io::Result<Stat> {
    // SAFETY: stat is plain old data; all-zero is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, writable stat; fstat touches nothing else.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Stat(st))
}

/// Why [`Dir::open_beneath`] refused a name.
#[derive(Debug)]
pub enum BeneathError {
    /// A symlink on the way leads out of the folder (an absolute target elsewhere, or `..`
    /// above the folder).
    Outside,
    /// A symlink on the way leads through a name starting with `.` (such as `.ferry/`), or the
    /// name itself starts with one.
    Hidden,
    /// A symlink that does not resolve: its target is missing, something on the way is not a
    /// folder, or there are too many links.
    Broken(io::Error),
    /// The name itself could not be opened (`NotFound`: it is gone).
    Io(io::Error),
}

impl std::fmt::Display for BeneathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BeneathError::Outside => f.write_str("symlink leads outside the folder"),
            BeneathError::Hidden => f.write_str("symlink leads through a hidden name"),
            BeneathError::Broken(e) => write!(f, "broken symlink: {e}"),
            BeneathError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for BeneathError {}

impl From<BeneathError> for io::Error {
    fn from(e: BeneathError) -> io::Error {
        match e {
            BeneathError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::PermissionDenied, other.to_string()),
        }
    }
}

/// What [`Dir::open_beneath`] opened.
#[derive(Debug)]
pub struct Beneath {
    /// The file, read-only, `O_NONBLOCK`; its type is not checked yet.
    pub file: File,
    /// The name was a symlink, resolved inside the folder.
    pub via_symlink: bool,
}

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name holds a NUL byte"))
}

/// `openat(2)`, retried on EINTR.
fn openat(dir: RawFd, name: &CStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: `name` is NUL-terminated and outlives the call; openat reads only it.
        let fd = unsafe { libc::openat(dir, name.as_ptr(), flags, libc::c_uint::from(mode)) };
        if fd >= 0 {
            // SAFETY: a fresh descriptor that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

fn cvt(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The text of the symlink open as `fd` (`O_PATH | O_NOFOLLOW`).
fn read_link(fd: &OwnedFd) -> io::Result<OsString> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: an empty, NUL-terminated path and a writable buffer of the length given.
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    if n >= buf.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    buf.truncate(n);
    Ok(OsString::from_vec(buf))
}

/// The user id ferry runs as.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether a folder described by `st` may hold ferry's state for user `me`: a folder, owned by
/// `me`, writable by nobody else. The error says what is wrong and what to do; `path` is only
/// named in it.
pub fn check_private(path: &Path, st: &Stat, me: u32) -> io::Result<()> {
    let refuse = |why: String| Err(io::Error::new(io::ErrorKind::PermissionDenied, why));
    if !st.is_dir() {
        return refuse(format!("{} is not a folder", path.display()));
    }
    if st.uid() != me {
        return refuse(format!(
            "{} belongs to uid {}, not to uid {me} that runs ferry: refusing to use it, since \
             its owner could have planted files or links in it (remove it, or chown it to \
             uid {me} after checking what it holds)",
            path.display(),
            st.uid()
        ));
    }
    if st.mode() & 0o022 != 0 {
        return refuse(format!(
            "{} has mode {:o}, so others can write into it: refusing to use it, since they \
             could have planted files or links in it (check what it holds, then \
             `chmod go-w {}`)",
            path.display(),
            st.mode(),
            path.display()
        ));
    }
    Ok(())
}

/// A clearer error for a name that `O_NOFOLLOW` refused.
fn link_refused(path: &Path, e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is a symbolic link: ferry does not follow links in its own folders (remove it)",
                path.display()
            ),
        )
    } else {
        e
    }
}

/// Opens a file the user named to send it: `O_NONBLOCK` so that a FIFO (or a device that
/// blocks) is refused at once instead of hanging the command, then the type is checked on the
/// descriptor. Anything but a regular file is `InvalidInput`, "not a regular file". Links are
/// followed: the path is the user's own choice, not a peer's.
///
/// A file under another process's write lease (Samba's oplocks, an NFS server's delegations)
/// refuses a non-blocking open with `EWOULDBLOCK` while the lease is broken; that file is
/// opened again blocking, waiting for the break as a plain open would (a FIFO never answers a
/// non-blocking read-only open so).
pub fn open_file_to_send(path: &Path) -> io::Result<(File, std::fs::Metadata)> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |flags: i32| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags | libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(path)
    };
    let file = match open(libc::O_NONBLOCK) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => open(0)?,
        r => r?,
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    // Reads of a regular file never block; the flag is cleared so that nothing relies on it.
    // SAFETY: fcntl on a descriptor this function owns.
    unsafe {
        let fl = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(file.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
        }
    }
    Ok((file, meta))
}

/// `mkdir -p`, saying "not a directory" where `path` (or a folder above it) is something
/// else: the system's "File exists" reads as if all were well.
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    match std::fs::DirBuilder::new().recursive(true).create(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            "exists and is not a directory",
        )),
        r => r,
    }
}

impl Dir {
    /// Opens the folder at `path` (links in `path` are followed: the caller named it).
    pub fn open(path: &Path) -> io::Result<Dir> {
        let c = cstr(path.as_os_str())?;
        let fd = openat(
            libc::AT_FDCWD,
            &c,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            0,
        )?;
        Ok(Dir {
            fd,
            path: path.to_owned(),
        })
    }

    /// Creates `path` and its missing parents (default mode), then opens it.
    pub fn create_all(path: &Path) -> io::Result<Dir> {
        create_dir_all(path)?;
        Dir::open(path)
    }

    /// The path the folder was opened by (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path()/name`, for messages.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    pub fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// A path that reaches this folder through its descriptor (`/proc/self/fd/<fd>`): the
    /// kernel resolves it to this very folder, whatever has been renamed or linked in place of
    /// its name since, so path-based code below it cannot be redirected by swapping a
    /// component above it (a served folder's `.ferry`, say). For code that works by path in
    /// folders of its own below a private one (the filestorage store, `ferry sync`'s state).
    /// Where `/proc` is not mounted, the folder's own path, after checking it still names
    /// this folder.
    pub fn anchored_path(&self) -> io::Result<PathBuf> {
        use std::os::unix::fs::MetadataExt;
        let st = self.stat()?;
        let same = |p: &Path| {
            std::fs::metadata(p).is_ok_and(|m| (m.dev(), m.ino()) == (st.dev(), st.ino()))
        };
        let proc = PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()));
        if same(&proc) {
            return Ok(proc);
        }
        if same(&self.path) {
            return Ok(self.path.clone());
        }
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} no longer names the folder ferry opened, and /proc is not mounted: \
                 refusing to use it",
                self.path.display()
            ),
        ))
    }

    /// `fstat` of the folder itself.
    pub fn stat(&self) -> io::Result<Stat> {
        fstat(self.fd.as_raw_fd())
    }

    /// `fstatat(name, AT_SYMLINK_NOFOLLOW)`: a symlink is described, not followed.
    pub fn stat_at(&self, name: &OsStr) -> io::Result<Stat> {
        let c = cstr(name)?;
        // SAFETY: stat is plain old data; all-zero is a valid value to be overwritten.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is NUL-terminated, `st` valid and writable.
        cvt(unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })?;
        Ok(Stat(st))
    }

    /// This folder may hold ferry's state ([`check_private`] for the running user).
    pub fn check_private(&self) -> io::Result<()> {
        check_private(&self.path, &self.stat()?, euid())
    }

    /// Opens the subfolder `name` without following a link, creating it (mode 0700) first if
    /// `create` says so, and checks that it is private ([`check_private`]).
    pub fn private_subdir(&self, name: &str, create: bool) -> io::Result<Dir> {
        let path = self.path.join(name);
        let c = cstr(OsStr::new(name))?;
        if create {
            // SAFETY: `c` is NUL-terminated; mkdirat reads only it.
            let r = unsafe { libc::mkdirat(self.fd.as_raw_fd(), c.as_ptr(), 0o700) };
            if r != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EEXIST) {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot create {}: {e}", path.display()),
                    ));
                }
            }
        }
        let fd = openat(
            self.fd.as_raw_fd(),
            &c,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0,
        )
        .map_err(|e| match e.raw_os_error() {
            // O_NOFOLLOW|O_DIRECTORY on a link gives ELOOP or ENOTDIR depending on the kernel.
            Some(libc::ELOOP) | Some(libc::ENOTDIR)
                if self.stat_at(OsStr::new(name)).is_ok_and(|s| s.is_symlink()) =>
            {
                link_refused(&path, io::Error::from_raw_os_error(libc::ELOOP))
            }
            Some(libc::ENOTDIR) => io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a folder", path.display()),
            ),
            _ => io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display())),
        })?;
        let dir = Dir { fd, path };
        dir.check_private()?;
        Ok(dir)
    }

    /// Creates `name`, which must not exist (not even as a dangling link), read-write with
    /// `mode` (less the umask): `O_CREAT | O_EXCL | O_NOFOLLOW`.
    pub fn create_new(&self, name: &OsStr, mode: u32) -> io::Result<File> {
        let c = cstr(name)?;
        let fd = openat(
            self.fd.as_raw_fd(),
            &c,
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode as libc::mode_t,
        )?;
        Ok(File::from(fd))
    }

    /// [`create_new`](Self::create_new) on the first free name `next` gives, trying at most
    /// `tries` names (a temporary another process, a stale leftover or a planted link holds);
    /// a taken last name is `AlreadyExists`, any other error ends it at once.
    pub fn create_first_free(
        &self,
        mode: u32,
        tries: u32,
        mut next: impl FnMut() -> OsString,
    ) -> io::Result<(OsString, File)> {
        let mut tried = 1;
        loop {
            let name = next();
            match self.create_new(&name, mode) {
                Ok(f) => return Ok((name, f)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tried < tries => tried += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Opens the state file `name` read-write without following a link, creating it with
    /// `mode` if `create` and it is missing, and checks what was opened: a regular file with
    /// one link, owned by the user running ferry. For files that are reopened (journals,
    /// resumable parts and their bitmaps).
    pub fn open_state_file(&self, name: &OsStr, mode: u32, create: bool) -> io::Result<File> {
        let c = cstr(name)?;
        let flags = libc::O_RDWR
            | libc::O_NOFOLLOW
            | libc::O_NONBLOCK
            | libc::O_CLOEXEC
            | if create { libc::O_CREAT } else { 0 };
        let fd = openat(self.fd.as_raw_fd(), &c, flags, mode as libc::mode_t)
            .map_err(|e| link_refused(&self.join(name), e))?;
        let st = fstat(fd.as_raw_fd())?;
        let refuse = |why: &str| {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{} {why}: refusing to use it", self.join(name).display()),
            ))
        };
        if !st.is_file() {
            return refuse("is not a regular file");
        }
        if st.uid() != euid() {
            return refuse("belongs to another user");
        }
        if st.nlink() != 1 {
            return refuse("has other hard links");
        }
        clear_nonblock(&fd)?;
        Ok(File::from(fd))
    }

    /// Opens `name` read-only without following a link (`O_NONBLOCK`, so a FIFO never
    /// blocks); anything but a regular file is `InvalidInput`.
    pub fn open_read(&self, name: &OsStr) -> io::Result<File> {
        let c = cstr(name)?;
        let fd = openat(self.fd.as_raw_fd(), &c, READ_FLAGS, 0)?;
        if !fstat(fd.as_raw_fd())?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        Ok(File::from(fd))
    }

    /// `unlinkat(name)`: removes a file (or a link itself), never a folder.
    pub fn remove_file(&self, name: &OsStr) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: `c` is NUL-terminated; unlinkat reads only it.
        cvt(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) })
    }

    /// `renameat(self/from, to_dir/to)`, replacing `to` (a link at `to` is replaced, not
    /// followed).
    pub fn rename(&self, from: &OsStr, to_dir: &Dir, to: &OsStr) -> io::Result<()> {
        let (f, t) = (cstr(from)?, cstr(to)?);
        // SAFETY: both names are NUL-terminated; renameat reads only them.
        cvt(unsafe {
            libc::renameat(
                self.fd.as_raw_fd(),
                f.as_ptr(),
                to_dir.fd.as_raw_fd(),
                t.as_ptr(),
            )
        })
    }

    /// `renameat2(self/from, to_dir/to, RENAME_NOREPLACE)`, or `linkat` + `unlinkat` where the
    /// kernel or file system lacks it. Never replaces `to`; an existing `to` (even a dangling
    /// link) gives `AlreadyExists`.
    pub fn rename_noreplace(&self, from: &OsStr, to_dir: &Dir, to: &OsStr) -> io::Result<()> {
        let (f, t) = (cstr(from)?, cstr(to)?);
        // SAFETY: both names are NUL-terminated and outlive the call; renameat2 reads only them.
        let r = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                self.fd.as_raw_fd(),
                f.as_ptr(),
                to_dir.fd.as_raw_fd(),
                t.as_ptr(),
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
                // SAFETY: as above; linkat without AT_SYMLINK_FOLLOW links a link itself.
                cvt(unsafe {
                    libc::linkat(
                        self.fd.as_raw_fd(),
                        f.as_ptr(),
                        to_dir.fd.as_raw_fd(),
                        t.as_ptr(),
                        0,
                    )
                })?;
                self.remove_file(from)
            }
            _ => Err(e),
        }
    }

    /// The names in the folder (`.` and `..` left out), in directory order.
    pub fn names(&self) -> io::Result<Vec<OsString>> {
        // A fresh open file description: its own read position, whatever other threads do.
        let fd = openat(
            self.fd.as_raw_fd(),
            c".",
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            0,
        )?;
        let raw = fd.as_raw_fd();
        // SAFETY: `raw` is an open folder descriptor; on success the stream owns it.
        let stream = unsafe { libc::fdopendir(raw) };
        if stream.is_null() {
            return Err(io::Error::last_os_error());
        }
        // The stream closes the descriptor now.
        std::mem::forget(fd);
        let mut names = Vec::new();
        let result = loop {
            // SAFETY: errno is thread-local; zeroing it tells the end of the folder from an error.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: `stream` is a live stream that only this function uses.
            let ent = unsafe { libc::readdir(stream) };
            if ent.is_null() {
                let e = io::Error::last_os_error();
                break match e.raw_os_error() {
                    Some(0) | None => Ok(()),
                    _ => Err(e),
                };
            }
            // SAFETY: readdir returned a valid entry whose d_name is NUL-terminated; it stays
            // valid until the next readdir on this stream.
            let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) }.to_bytes();
            if name != b"." && name != b".." {
                names.push(OsString::from_vec(name.to_vec()));
            }
        };
        // SAFETY: the stream was opened above and is closed exactly once.
        unsafe { libc::closedir(stream) };
        result.map(|()| names)
    }

    /// fsync(2) of the folder: makes renames into and out of it durable.
    pub fn sync(&self) -> io::Result<()> {
        #[cfg(test)]
        if let Ok(st) = fstat(self.fd.as_raw_fd()) {
            SYNCED.with(|s| s.borrow_mut().push(st.ino()));
        }
        // SAFETY: fsync acts only on the descriptor.
        cvt(unsafe { libc::fsync(self.fd.as_raw_fd()) })
    }

    /// `fstatvfs(2)` of the folder's file system.
    pub fn statvfs(&self) -> io::Result<libc::statvfs> {
        // SAFETY: statvfs is plain old data; all-zero is a valid value to be overwritten.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is valid and writable.
        cvt(unsafe { libc::fstatvfs(self.fd.as_raw_fd(), &mut st) })?;
        Ok(st)
    }

    /// `f_type` of `fstatfs(2)`: which kind of file system the folder is on.
    pub fn fs_type(&self) -> io::Result<i64> {
        // SAFETY: statfs is plain old data; all-zero is a valid value to be overwritten.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is valid and writable.
        cvt(unsafe { libc::fstatfs(self.fd.as_raw_fd(), &mut st) })?;
        // f_type's integer type differs between targets.
        #[allow(clippy::unnecessary_cast)]
        Ok(st.f_type as i64)
    }

    /// Opens the served file `name` (one component, not starting with `.`) read-only and
    /// `O_NONBLOCK`, resolving a symlink only beneath this folder (module doc). `roots` are
    /// the paths an absolute link target may begin with to count as inside (the folder's
    /// canonical path and the path it was named by). The caller checks the type of what was
    /// opened.
    pub fn open_beneath(&self, name: &OsStr, roots: &[PathBuf]) -> Result<Beneath, BeneathError> {
        let bytes = name.as_bytes();
        if bytes.first() == Some(&b'.') {
            return Err(BeneathError::Hidden);
        }
        if bytes.is_empty() || bytes.contains(&b'/') {
            return Err(BeneathError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a plain file name",
            )));
        }
        let c = cstr(name).map_err(BeneathError::Io)?;
        match openat(self.fd.as_raw_fd(), &c, READ_FLAGS, 0) {
            Ok(fd) => Ok(Beneath {
                file: File::from(fd),
                via_symlink: false,
            }),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Ok(Beneath {
                file: self.resolve(name, roots)?,
                via_symlink: true,
            }),
            Err(e) => Err(BeneathError::Io(e)),
        }
    }

    /// The component-by-component resolver of the module doc.
    fn resolve(&self, name: &OsStr, roots: &[PathBuf]) -> Result<File, BeneathError> {
        // Folders below the root that the path went through, innermost last.
        let mut folders: Vec<OwnedFd> = Vec::new();
        // Components still to walk, the next one last.
        let mut todo: Vec<OsString> = vec![name.to_owned()];
        let mut links = 0u32;
        let mut first = true;
        let broken = |first: bool, e: io::Error| {
            if first {
                BeneathError::Io(e)
            } else {
                BeneathError::Broken(e)
            }
        };
        while let Some(comp) = todo.pop() {
            let bytes = comp.as_bytes();
            if bytes.is_empty() || bytes == b"." {
                continue;
            }
            if bytes == b".." {
                if folders.pop().is_none() {
                    return Err(BeneathError::Outside);
                }
                continue;
            }
            if bytes[0] == b'.' {
                return Err(BeneathError::Hidden);
            }
            let parent = folders
                .last()
                .map_or(self.fd.as_raw_fd(), |d| d.as_raw_fd());
            let c = cstr(&comp).map_err(|e| broken(first, e))?;
            if todo.is_empty() {
                match openat(parent, &c, READ_FLAGS, 0) {
                    Ok(fd) => return Ok(File::from(fd)),
                    Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {}
                    Err(e) => return Err(broken(first, e)),
                }
            }
            let fd = openat(
                parent,
                &c,
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0,
            )
            .map_err(|e| broken(first, e))?;
            let st = fstat(fd.as_raw_fd()).map_err(|e| broken(first, e))?;
            if st.is_symlink() {
                links += 1;
                if links > MAX_LINKS {
                    return Err(BeneathError::Broken(io::Error::from_raw_os_error(
                        libc::ELOOP,
                    )));
                }
                let target = PathBuf::from(read_link(&fd).map_err(|e| broken(first, e))?);
                let rel = if target.is_absolute() {
                    folders.clear();
                    roots
                        .iter()
                        .find_map(|r| target.strip_prefix(r).ok())
                        .ok_or(BeneathError::Outside)?
                        .to_owned()
                } else {
                    target
                };
                for part in rel.components().rev() {
                    match part {
                        Component::Normal(p) => todo.push(p.to_owned()),
                        Component::ParentDir => todo.push(OsString::from("..")),
                        Component::CurDir => {}
                        // Absolute paths were made relative above.
                        Component::RootDir | Component::Prefix(_) => {
                            return Err(BeneathError::Outside)
                        }
                    }
                }
            } else if st.is_dir() && !todo.is_empty() {
                if folders.len() >= MAX_DEPTH {
                    return Err(BeneathError::Broken(io::Error::from_raw_os_error(
                        libc::ENAMETOOLONG,
                    )));
                }
                folders.push(fd);
            } else if todo.is_empty() {
                // It was a link when opened above and is something else now: look again (the
                // link count bounds how often).
                links += 1;
                if links > MAX_LINKS {
                    return Err(BeneathError::Broken(io::Error::from_raw_os_error(
                        libc::ELOOP,
                    )));
                }
                todo.push(comp);
                continue;
            } else {
                return Err(BeneathError::Broken(io::Error::from_raw_os_error(
                    libc::ENOTDIR,
                )));
            }
            first = false;
        }
        // The path ended on a folder (a link to the root, or one ending in "..").
        Err(BeneathError::Broken(io::Error::from_raw_os_error(
            libc::EISDIR,
        )))
    }
}

/// Clears `O_NONBLOCK` (set while opening so a FIFO could not block) on a regular file.
fn clear_nonblock(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own; F_GETFL/F_SETFL take and give plain flags.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
