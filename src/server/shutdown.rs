//! The one shutdown signal: a flag that threads may look at, a condition variable that
//! [`Shutdown::wait`] sleeps on, and wake fds (eventfd) that accept threads poll beside their
//! listener. Triggering sets the flag, then wakes every sleeper at once, so nothing has to poll
//! the flag on a timer.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The shared shutdown signal. Cloning shares it; [`trigger`](Self::trigger) is for the signal
/// handler's thread (`ctrlc`), [`ServerHandle::stop`](super::ServerHandle::stop) and tests.
#[derive(Clone, Default)]
pub struct Shutdown(Arc<Inner>);

#[derive(Default)]
struct Inner {
    flag: AtomicBool,
    /// Wake fds of running servers; guarded together with the condition variable.
    wakers: Mutex<Vec<Arc<WakeFd>>>,
    cond: Condvar,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the flag and wakes everything waiting for it. Idempotent.
    pub fn trigger(&self) {
        let wakers = self.0.wakers.lock().unwrap_or_else(|e| e.into_inner());
        self.0.flag.store(true, Ordering::SeqCst);
        for w in wakers.iter() {
            w.wake();
        }
        self.0.cond.notify_all();
    }

    pub fn is_triggered(&self) -> bool {
        self.0.flag.load(Ordering::SeqCst)
    }

    /// Sleeps until the flag is set (no timer: woken by [`trigger`](Self::trigger)).
    pub fn wait(&self) {
        let mut g = self.0.wakers.lock().unwrap_or_else(|e| e.into_inner());
        while !self.is_triggered() {
            g = self.0.cond.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Sleeps until the flag is set or `timeout` passes; true when it is set.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = self.0.wakers.lock().unwrap_or_else(|e| e.into_inner());
        while !self.is_triggered() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            g = self
                .0
                .cond
                .wait_timeout(g, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        self.is_triggered()
    }

    /// Adds a wake fd that [`trigger`](Self::trigger) will write; woken at once if the flag is
    /// already set.
    pub(crate) fn register(&self, w: Arc<WakeFd>) {
        let mut wakers = self.0.wakers.lock().unwrap_or_else(|e| e.into_inner());
        if self.is_triggered() {
            w.wake();
        }
        wakers.push(w);
    }

    pub(crate) fn unregister(&self, w: &Arc<WakeFd>) {
        let mut wakers = self.0.wakers.lock().unwrap_or_else(|e| e.into_inner());
        wakers.retain(|x| !Arc::ptr_eq(x, w));
    }
}

/// An eventfd that becomes readable once woken: every thread polling it wakes (readiness is
/// level-triggered until [`clear`](Self::clear), which the listeners never call, so for them
/// it stays readable for good; an event loop that is woken for more than its end clears it).
#[derive(Debug)]
pub struct WakeFd(OwnedFd);

impl WakeFd {
    pub fn new() -> io::Result<WakeFd> {
        // SAFETY: eventfd(2) takes no pointers; a non-negative result is a new fd we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd(2) and is owned by nothing else.
        Ok(WakeFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live local to an eventfd we own. A full counter
        // (EAGAIN) still leaves it readable, which is all that matters.
        unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    pub fn raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Makes it unreadable again (until the next [`wake`](Self::wake)).
    pub fn clear(&self) {
        let mut n = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live local from an eventfd we own; EAGAIN (not
        // woken) leaves it as it is.
        unsafe { libc::read(self.0.as_raw_fd(), n.as_mut_ptr().cast(), n.len()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    #[test]
    fn wait_returns_when_another_thread_triggers() {
        let sd = Shutdown::new();
        let sd2 = sd.clone();
        let h = thread::spawn(move || sd2.wait());
        thread::sleep(Duration::from_millis(50));
        assert!(!sd.is_triggered());
        sd.trigger();
        h.join().unwrap();
        assert!(sd.wait_timeout(Duration::ZERO));
    }

    #[test]
    fn wait_timeout_times_out_untriggered() {
        let sd = Shutdown::new();
        let t0 = Instant::now();
        assert!(!sd.wait_timeout(Duration::from_millis(30)));
        assert!(t0.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn wake_fd_becomes_readable_for_every_poller() {
        let sd = Shutdown::new();
        let w = Arc::new(WakeFd::new().unwrap());
        sd.register(w.clone());
        assert!(!crate::transport::wait_readable(
            w.raw_fd(),
            Duration::from_millis(1)
        ));
        sd.trigger();
        assert!(crate::transport::wait_readable(w.raw_fd(), Duration::ZERO));
        assert!(crate::transport::wait_readable(w.raw_fd(), Duration::ZERO));
        sd.unregister(&w);
        // Registered after the trigger: woken at once.
        let late = Arc::new(WakeFd::new().unwrap());
        sd.register(late.clone());
        assert!(crate::transport::wait_readable(
            late.raw_fd(),
            Duration::ZERO
        ));
    }
}
