//! Linux inotify, raw: one descriptor, watches on folders, and a decoder for the event records
//! the kernel hands to `read(2)`.
//!
//! What it is for: the live catalog (`live.rs`) watches the served folder with it. This module
//! only wraps the system calls (each `unsafe` block is one call with its `SAFETY` note) and
//! parses events; deciding what an event means for the catalog is `live.rs`'s job.
//!
//! Event record, as `read(2)` returns them back to back (native byte order):
//!
//! ```text
//! i32 wd  u32 mask  u32 cookie  u32 len  name[len]   -- name NUL-padded, absent when len = 0
//! ```
//!
//! The decoder never trusts `len`: a record that runs past the buffer ends the parse.

use crate::wire::Cursor;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

pub use libc::{
    IN_ATTRIB, IN_CLOSE_WRITE, IN_CREATE, IN_DELETE, IN_DELETE_SELF, IN_IGNORED, IN_MODIFY,
    IN_MOVED_FROM, IN_MOVED_TO, IN_MOVE_SELF, IN_Q_OVERFLOW, IN_UNMOUNT,
};

/// Fixed part of one event record.
const EVENT_HEADER: usize = 16;
/// A read buffer that holds at least one event with the longest name (255 bytes + NUL).
pub const READ_BUFFER: usize = 64 * 1024;

/// An inotify instance (non-blocking, close-on-exec).
#[derive(Debug)]
pub struct Inotify {
    fd: OwnedFd,
}

impl Inotify {
    pub fn new() -> io::Result<Inotify> {
        // SAFETY: inotify_init1 takes only flags and returns a new descriptor or -1.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
        Ok(Inotify {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Watches `path` for the events in `mask`; returns the watch descriptor.
    pub fn add_watch(&self, path: &Path, mask: u32) -> io::Result<i32> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
        // SAFETY: our descriptor is open for as long as `self`; `c` is a NUL-terminated string
        // that outlives the call.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), mask) };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(wd)
    }

    /// Reads queued events into `buf`; `Ok(0)` when none are queued. The descriptor is
    /// non-blocking, so a read never waits and is never interrupted by a signal (EINTR comes
    /// only while waiting): no retry loop.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            return Ok(0);
        }
        Err(e)
    }
}

impl AsRawFd for Inotify {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// One decoded event; `name` is the entry's name inside the watched folder, when there is one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event<'a> {
    pub wd: i32,
    pub mask: u32,
    pub cookie: u32,
    pub name: Option<&'a OsStr>,
}

/// Iterates the events of one `read`; stops at the end or at a record that does not fit.
pub fn events(buf: &[u8]) -> Events<'_> {
    Events {
        cur: Cursor::new(buf),
    }
}

/// Iterator returned by [`events`].
pub struct Events<'a> {
    cur: Cursor<'a>,
}

impl<'a> Iterator for Events<'a> {
    type Item = Event<'a>;

    fn next(&mut self) -> Option<Event<'a>> {
        let head = self.cur.array::<EVENT_HEADER>()?;
        let word = |i: usize| [head[i], head[i + 1], head[i + 2], head[i + 3]];
        let len = u32::from_ne_bytes(word(12)) as usize;
        let Some(raw) = self.cur.take(len) else {
            // A record claiming more bytes than were read: stop here for good.
            self.cur = Cursor::new(&[]);
            return None;
        };
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        Some(Event {
            wd: i32::from_ne_bytes(word(0)),
            mask: u32::from_ne_bytes(word(4)),
            cookie: u32::from_ne_bytes(word(8)),
            name: (end > 0).then(|| OsStr::from_bytes(&raw[..end])),
        })
    }
}

/// Waits until one of `fds` is readable or `timeout` passes (`None`: no timeout); returns
/// which are readable. EINTR counts as a wake with nothing readable.
pub fn wait_readable<const N: usize>(
    fds: [RawFd; N],
    timeout: Option<Duration>,
) -> io::Result<[bool; N]> {
    let mut pfds = fds.map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    let ms = match timeout {
        None => -1,
        // Round up, so a deadline 0.4 ms away is not a busy loop of zero-timeout polls.
        Some(t) => t
            .as_micros()
            .div_ceil(1000)
            .min(i32::MAX as u128)
            .try_into()
            .unwrap_or(i32::MAX),
    };
    // SAFETY: `pfds` is a valid array of N pollfd structures for the whole call.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), N as libc::nfds_t, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok([false; N]);
        }
        return Err(e);
    }
    // A negative descriptor is ignored by poll(2) and never reported readable.
    Ok(pfds.map(|p| p.fd >= 0 && p.revents != 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(wd: i32, mask: u32, cookie: u32, name: &[u8], pad: usize) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&wd.to_ne_bytes());
        v.extend_from_slice(&mask.to_ne_bytes());
        v.extend_from_slice(&cookie.to_ne_bytes());
        let len = if name.is_empty() { 0 } else { name.len() + pad };
        v.extend_from_slice(&(len as u32).to_ne_bytes());
        if len > 0 {
            v.extend_from_slice(name);
            v.resize(v.len() + pad, 0);
        }
        v
    }

    #[test]
    fn decodes_back_to_back_records_with_and_without_names() {
        let bytes = [
            record(1, IN_CLOSE_WRITE, 0, b"a.png", 11),
            record(-1, IN_Q_OVERFLOW, 0, b"", 0),
            record(1, IN_MOVED_TO, 77, b"caf\xc3\xa9", 3),
        ]
        .concat();
        let got: Vec<Event> = events(&bytes).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].name, Some(OsStr::new("a.png")));
        assert_eq!((got[0].wd, got[0].mask), (1, IN_CLOSE_WRITE));
        assert_eq!(
            (got[1].wd, got[1].mask, got[1].name),
            (-1, IN_Q_OVERFLOW, None)
        );
        assert_eq!(got[2].cookie, 77);
        assert_eq!(got[2].name, Some(OsStr::new("caf\u{e9}")));
    }

    #[test]
    fn truncations_and_random_bytes_never_panic() {
        let bytes = [
            record(1, IN_CREATE, 0, b"x", 15),
            record(1, IN_DELETE, 0, b"yy", 2),
        ]
        .concat();
        for n in 0..=bytes.len() {
            let got = events(&bytes[..n]).count();
            let whole = if n >= bytes.len() {
                2
            } else if n >= 32 {
                1
            } else {
                0
            };
            assert_eq!(got, whole, "cut at {n}");
        }
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for len in 0..600 {
            let b: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            for e in events(&b) {
                assert!(e.name.is_none_or(|n| n.len() <= b.len()));
            }
        }
        // A huge len past the buffer ends the parse.
        let mut lie = record(1, IN_CREATE, 0, b"z", 3);
        lie[12..16].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(events(&lie).count(), 0);
    }

    #[test]
    fn sees_a_file_closed_after_writing() {
        let dir = std::env::temp_dir().join(format!("ferry-inotify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ino = Inotify::new().unwrap();
        let wd = ino.add_watch(&dir, IN_CLOSE_WRITE | IN_DELETE).unwrap();
        let mut buf = vec![0u8; READ_BUFFER];
        assert_eq!(ino.read(&mut buf).unwrap(), 0, "nothing queued yet");
        std::fs::write(dir.join("f.bin"), b"bytes").unwrap();
        let [ready] = wait_readable([ino.as_raw_fd()], Some(Duration::from_secs(5))).unwrap();
        assert!(ready);
        let n = ino.read(&mut buf).unwrap();
        let e = events(&buf[..n]).next().unwrap();
        assert_eq!(
            (e.wd, e.mask, e.name),
            (wd, IN_CLOSE_WRITE, Some(OsStr::new("f.bin")))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The descriptor handed out is the inotify instance's (mutation run: `as_raw_fd` as 0
    /// left the watcher polling standard input).
    #[test]
    fn the_raw_descriptor_is_the_inotify_instance() {
        let ino = Inotify::new().unwrap();
        let link = std::fs::read_link(format!("/proc/self/fd/{}", ino.as_raw_fd())).unwrap();
        assert_eq!(link.to_str(), Some("anon_inode:inotify"));
    }

    /// `wait_readable` says which descriptors are readable and, without a timeout, waits for
    /// one; a timeout with nothing readable is `[false]`, not an error left over from an
    /// earlier call's errno (mutation run: its result as all true, `-1` as `1` ms, `rc < 0` as
    /// `== 0`).
    #[test]
    fn wait_readable_waits_for_readable_or_the_timeout() {
        let (mut tx, rx) = std::os::unix::net::UnixStream::pair().unwrap();
        let (a, b) = (rx.as_raw_fd(), tx.as_raw_fd());
        // SAFETY: closing -1 only sets errno (EBADF), which a timeout must not report.
        unsafe { libc::close(-1) };
        let quiet = wait_readable([a, b], Some(Duration::from_millis(20))).unwrap();
        assert_eq!(quiet, [false, false]);
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            std::io::Write::write_all(&mut tx, b"x").unwrap();
            tx
        });
        assert_eq!(wait_readable([a], None).unwrap(), [true]);
        drop(writer.join().unwrap());
    }

    /// A signal that interrupts the wait is a wake with nothing readable, not an error
    /// (mutation run: the EINTR test as `!=` returned EINTR as an error, and any other error
    /// as nothing readable).
    #[test]
    fn a_signal_during_the_wait_is_a_wake_with_nothing_readable() {
        extern "C" fn ignore(_: libc::c_int) {}
        // SAFETY: a handler that does nothing, installed without SA_RESTART (poll(2) is never
        // restarted anyway); SIGUSR1 is used by nothing else in this process.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = ignore as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
        }
        let (quiet, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = quiet.as_raw_fd();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            // SAFETY: pthread_self has no preconditions.
            tx.send(unsafe { libc::pthread_self() }).unwrap();
            wait_readable([fd], None)
        });
        let thread = rx.recv().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        // Signalled until the wait returns (a signal before poll(2) began is missed).
        while !waiter.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "the wait never returned"
            );
            std::thread::sleep(Duration::from_millis(50));
            // SAFETY: the thread is joinable and not yet joined, so its id is still valid.
            unsafe { libc::pthread_kill(thread, libc::SIGUSR1) };
        }
        assert_eq!(waiter.join().unwrap().unwrap(), [false]);
    }

    /// A watch the kernel refuses is an error, not a descriptor (mutation run: `wd < 0` as
    /// `== 0` returned -1 as a watch).
    #[test]
    fn a_missing_path_cannot_be_watched() {
        let ino = Inotify::new().unwrap();
        let missing =
            std::env::temp_dir().join(format!("ferry-inotify-none-{}", std::process::id()));
        let e = ino.add_watch(&missing, IN_CLOSE_WRITE).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
