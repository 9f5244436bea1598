//! One FastDP connection's socket as the drivers use it: an input buffer the machines read
//! from (payload slices are handed out of it and written straight to the file), reads bounded
//! by a deadline, and a wait that also wakes when another connection of the same transfer
//! changed the shared plan (an [`Wake`]).
//!
//! Out of scope: what the bytes mean (the machines) and what is done with them (the drivers).

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::transport::{Stream, TryRead};

/// Size of a connection's input buffer: large reads, so a 1 MiB chunk arrives in few slices.
pub const READ_BUF: usize = 256 * 1024;
/// Size of the buffer of a connection moving chunks ([`Link::enlarge`]): a chunk in one or two
/// reads and writes. Measured (1 GiB push into /dev/shm, hash known, one connection): the
/// server's CPU 2.0 -> 1.75 s against 256 KiB.
pub const DATA_READ_BUF: usize = 1024 * 1024;
/// Links of the process holding a [`DATA_READ_BUF`] buffer at most (32 MiB in all): the
/// others keep [`READ_BUF`], so 1,024 connections of a peer cost no more than before.
const MAX_ENLARGED: usize = 32;

static ENLARGED: AtomicUsize = AtomicUsize::new(0);

/// One of the [`MAX_ENLARGED`] large buffers, given back when dropped.
struct Enlarged;

impl Drop for Enlarged {
    fn drop(&mut self) {
        ENLARGED.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a bounded read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Got {
    /// New bytes are in the buffer.
    Data,
    /// The peer closed its side.
    Eof,
    /// The deadline passed (or the wait was woken) with nothing read.
    Nothing,
}

/// A connection: the stream and the bytes read from it not yet consumed.
pub struct Link {
    pub stream: Stream,
    pub buf: Vec<u8>,
    pub start: usize,
    pub end: usize,
    /// Holds one of the [`MAX_ENLARGED`] large buffers.
    enlarged: Option<Enlarged>,
}

impl Link {
    pub fn new(stream: Stream) -> Link {
        Link {
            stream,
            buf: vec![0; READ_BUF],
            start: 0,
            end: 0,
            enlarged: None,
        }
    }

    /// Moves to a [`DATA_READ_BUF`] buffer for bulk data, if fewer than `MAX_ENLARGED` (32)
    /// links of the process hold one (the bytes pending are kept). True when it did.
    pub fn enlarge(&mut self) -> bool {
        if self.enlarged.is_some() {
            return true;
        }
        let taken = ENLARGED.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_ENLARGED).then_some(n + 1)
        });
        if taken.is_err() {
            return false;
        }
        self.enlarged = Some(Enlarged);
        self.buf.resize(DATA_READ_BUF.max(self.buf.len()), 0);
        true
    }

    /// Bytes read and not consumed yet.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub fn has_pending(&self) -> bool {
        self.start < self.end
    }

    fn make_room(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// Reads what arrives before `deadline` (`None`: no deadline). With a `wake` the wait also
    /// ends when it is notified (then `Nothing`).
    pub fn read(&mut self, deadline: Option<Instant>, wake: Option<&Wake>) -> io::Result<Got> {
        self.make_room();
        if self.end == self.buf.len() {
            // The machines consume everything they are given; a full buffer is a caller's bug,
            // reported rather than spun on.
            return Err(io::Error::other("fastdp: input buffer full"));
        }
        loop {
            let timeout = match deadline {
                None => None,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(Got::Nothing);
                    }
                    Some(left)
                }
            };
            if let Some(w) = wake {
                // Records already decrypted (TLS) or bytes already queued are read at once.
                match self.stream.try_read(&mut self.buf[self.end..])? {
                    TryRead::Data(n) => {
                        self.end += n;
                        return Ok(Got::Data);
                    }
                    TryRead::Eof => return Ok(Got::Eof),
                    TryRead::Empty => {}
                }
                match self.stream.plain_fd() {
                    Some(fd) => {
                        if !w.wait(fd, timeout)? {
                            return Ok(Got::Nothing);
                        }
                    }
                    None => {
                        // TLS: no fd to wait on beside the wake; a short read timeout instead.
                        let t = timeout.map_or(WAKE_POLL, |t| t.min(WAKE_POLL));
                        self.stream.set_read_timeout(Some(t))?;
                        if w.take() {
                            return Ok(Got::Nothing);
                        }
                    }
                }
            } else {
                self.stream
                    .set_read_timeout(Some(timeout.unwrap_or(Duration::from_secs(3600))))?;
            }
            match self.stream.read(&mut self.buf[self.end..]) {
                Ok(0) => return Ok(Got::Eof),
                Ok(n) => {
                    self.end += n;
                    return Ok(Got::Data);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if wake.is_some() {
                        return Ok(Got::Nothing);
                    }
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads whatever has already arrived, without waiting.
    pub fn try_read(&mut self) -> io::Result<Got> {
        self.make_room();
        if self.end == self.buf.len() {
            return Ok(Got::Nothing);
        }
        match self.stream.try_read(&mut self.buf[self.end..])? {
            TryRead::Data(n) => {
                self.end += n;
                Ok(Got::Data)
            }
            TryRead::Eof => Ok(Got::Eof),
            TryRead::Empty => Ok(Got::Nothing),
        }
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }
}

/// How often a TLS connection waiting on a wake looks at it.
const WAKE_POLL: Duration = Duration::from_millis(50);

/// An eventfd one connection waits on beside its socket: another connection of the same
/// transfer notifies it when the shared plan changed (completed, a chunk queued again), so an
/// idle connection sends its FIN or the re-sent chunk at once instead of at its next timeout.
#[derive(Debug)]
pub struct Wake {
    fd: OwnedFd,
}

impl Wake {
    pub fn new() -> io::Result<Wake> {
        // SAFETY: eventfd(2) with constant flags; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nothing else.
        Ok(Wake {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn notify(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd; a full counter only fails.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Clears the counter; true if it was notified.
    pub fn take(&self) -> bool {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from our non-blocking eventfd.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        n == 8 && v > 0
    }

    /// Waits until `sock` is readable (true) or this wake is notified or `timeout` passes
    /// (false).
    fn wait(&self, sock: RawFd, timeout: Option<Duration>) -> io::Result<bool> {
        let mut fds = [
            libc::pollfd {
                fd: sock,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = timeout.map_or(-1, |t| t.as_millis().clamp(1, i32::MAX as u128) as i32);
        loop {
            // SAFETY: `fds` is a live array of two pollfds for the duration of the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if fds[1].revents != 0 {
                self.take();
                return Ok(false);
            }
            return Ok(fds[0].revents != 0);
        }
    }
}

/// The wakes of every connection of one transfer.
#[derive(Debug, Default)]
pub struct Wakers {
    list: Mutex<Vec<Arc<Wake>>>,
}

impl Wakers {
    pub fn add(&self, w: Arc<Wake>) {
        self.list
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(w);
    }

    pub fn remove(&self, w: &Arc<Wake>) {
        self.list
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|x| !Arc::ptr_eq(x, w));
    }

    /// Wakes every connection but `me`.
    pub fn notify_others(&self, me: &Arc<Wake>) {
        for w in self
            .list
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            if !Arc::ptr_eq(w, me) {
                w.notify();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    /// At most [`MAX_ENLARGED`] links of the process hold a large buffer; bytes pending are
    /// kept when a link moves to one, and a dropped link gives its slot back. (Other tests may
    /// hold slots meanwhile: the cap may be met sooner, never later.)
    #[test]
    fn large_buffers_are_capped_process_wide_and_given_back() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut first = Link::new(Stream::Unix(a));
        first.buf[..3].copy_from_slice(b"xyz");
        first.end = 3;
        let mut links = Vec::new();
        let mut refused = false;
        for _ in 0..=MAX_ENLARGED {
            let (s, _) = std::os::unix::net::UnixStream::pair().unwrap();
            let mut l = Link::new(Stream::Unix(s));
            if !l.enlarge() {
                refused = true;
                assert_eq!(l.buf.len(), READ_BUF);
                break;
            }
            assert_eq!(l.buf.len(), DATA_READ_BUF);
            links.push(l);
        }
        assert!(refused, "never more than {MAX_ENLARGED}");
        assert!(links.len() <= MAX_ENLARGED);
        drop(links);
        // Slots come back (retried: a parallel test may take one for a moment).
        let t0 = Instant::now();
        while !first.enlarge() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "slots were not given back"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(first.enlarge(), "idempotent");
        assert_eq!(first.pending(), b"xyz");
        assert_eq!(first.buf.len(), DATA_READ_BUF);
    }

    #[test]
    fn a_wait_ends_on_data_on_a_wake_and_on_its_deadline() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        let mut link = Link::new(Stream::Tcp(s));
        let wake = Arc::new(Wake::new().unwrap());
        let wakers = Wakers::default();
        let other = Arc::new(Wake::new().unwrap());
        wakers.add(Arc::clone(&wake));
        wakers.add(Arc::clone(&other));
        // Deadline: nothing arrives.
        let t0 = Instant::now();
        let got = link
            .read(Some(t0 + Duration::from_millis(50)), Some(&wake))
            .unwrap();
        assert_eq!(got, Got::Nothing);
        assert!(t0.elapsed() >= Duration::from_millis(45));
        // Woken by another connection of the transfer (its own wake is not notified).
        wakers.notify_others(&other);
        assert!(!other.take());
        let got = link.read(None, Some(&wake)).unwrap();
        assert_eq!(got, Got::Nothing);
        // Data.
        peer.write_all(b"abc").unwrap();
        assert_eq!(link.read(None, Some(&wake)).unwrap(), Got::Data);
        assert_eq!(link.pending(), b"abc");
        link.start = link.end;
        drop(peer);
        assert_eq!(link.read(None, Some(&wake)).unwrap(), Got::Eof);
        wakers.remove(&wake);
        wakers.notify_others(&other);
        assert!(!wake.take(), "removed from the transfer");
    }
}
