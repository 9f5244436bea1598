//! A userspace wire with delay and loss: what `tc netem` does on a link, for kernels built
//! without `sch_netem` (the CI kernel is one).
//!
//! Two TAP devices are created in the switch namespace: `s-<host>` stays there as a bridge port,
//! `t-<host>` moves into the host's namespace and becomes its `eth0`. A thread of the test
//! process holds both file descriptors and copies every Ethernet frame across after `delay`,
//! dropping each frame with probability `loss`, independently in each direction (so the round
//! trip is twice the delay). Frames wait in a FIFO (one delay for all keeps their order, as
//! netem does without jitter) of at most [`MAX_QUEUED`] frames; beyond that they are dropped,
//! as netem's `limit` does.
//!
//! The devices are not persistent: they vanish when the thread closes the descriptors (on
//! [`Wire::stop`], or when the process dies however it dies).

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Delay and loss of one link (each direction).
#[derive(Clone, Copy, Debug)]
pub struct Impair {
    pub delay: Duration,
    /// Fraction of frames dropped, 0.0 to 1.0.
    pub loss: f64,
}

/// Frames held per direction at most (netem's default `limit` is 1000 packets; jumbo frames
/// at a few hundred MB/s need more at 20 ms).
const MAX_QUEUED: usize = 20_000;
/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// A running wire; [`stop`](Wire::stop) ends it.
pub struct Wire {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn open_tap(name: &str) -> io::Result<OwnedFd> {
    let path = c"/dev/net/tun";
    // SAFETY: open(2) with a NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // struct ifreq: 16 bytes of name, then a short of flags, padded to 40 bytes.
    let mut ifr = [0u8; 40];
    let n = name.len().min(15);
    ifr[..n].copy_from_slice(&name.as_bytes()[..n]);
    let flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `ifr` is large enough to hold.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    Ok(fd)
}

fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl Wire {
    /// Makes the two devices in `switch_ns`, moves the host's into `host_ns` as `eth0`, and
    /// starts copying. The switch's device is named `h-<host>`, like a veth port would be.
    pub fn start(
        switch_ns: &str,
        host_ns: &str,
        host: &str,
        impair: Impair,
        mtu: u32,
    ) -> io::Result<Wire> {
        let sw_dev = format!("h-{host}");
        let host_dev = format!("t-{host}");
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
        let ns_path = format!("/run/netns/{switch_ns}");
        let (sw_name, host_name) = (sw_dev.clone(), host_dev.clone());
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("wire-{host}"))
            .spawn(move || {
                // Only this thread enters the switch namespace, so the devices are born there.
                let made = (|| {
                    let ns = File::open(&ns_path)?;
                    // SAFETY: setns(2) on this thread with a namespace file we opened.
                    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok((open_tap(&sw_name)?, open_tap(&host_name)?))
                })();
                let (sw, hs) = match made {
                    Ok(p) => {
                        let _ = ready_tx.send(Ok(()));
                        p
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                pump(&sw, &hs, impair, &stop2);
            })?;
        let wire = Wire {
            stop,
            thread: Some(thread),
        };
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| io::Error::other("wire thread did not start"))??;
        let mtu = mtu.to_string();
        ip(&["-n", switch_ns, "link", "set", &host_dev, "mtu", &mtu])?;
        ip(&["-n", switch_ns, "link", "set", &host_dev, "netns", host_ns])?;
        ip(&["-n", host_ns, "link", "set", &host_dev, "name", "eth0"])?;
        Ok(wire)
    }

    /// Stops the thread; the devices disappear with its descriptors.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One direction: frames waiting for their time.
struct Lane {
    queue: VecDeque<(Instant, Vec<u8>)>,
}

/// xorshift64*: enough randomness for dropping frames.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn pump(a: &OwnedFd, b: &OwnedFd, impair: Impair, stop: &AtomicBool) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ (u64::from(std::process::id()) << 32);
    let mut rng = Rng(seed | 1);
    let mut lanes = [
        Lane {
            queue: VecDeque::new(),
        },
        Lane {
            queue: VecDeque::new(),
        },
    ];
    let fds = [a.as_raw_fd(), b.as_raw_fd()];
    let mut buf = vec![0u8; 65_536 + 64];
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        // Deliver what is due: lane 0 carries a -> b, lane 1 b -> a.
        for (i, lane) in lanes.iter_mut().enumerate() {
            while lane.queue.front().is_some_and(|(due, _)| *due <= now) {
                let (_, frame) = lane.queue.pop_front().expect("front exists");
                // SAFETY: write(2) of an initialised buffer to a TAP descriptor we own. A
                // failed write is a lost frame, as on a real wire.
                unsafe { libc::write(fds[1 - i], frame.as_ptr().cast(), frame.len()) };
            }
        }
        let next_due = lanes
            .iter()
            .filter_map(|l| l.queue.front().map(|(d, _)| *d))
            .min();
        let wait = next_due
            .map(|d| d.saturating_duration_since(now))
            .unwrap_or(Duration::from_millis(100))
            .min(Duration::from_millis(100));
        let mut pfd = [
            libc::pollfd {
                fd: fds[0],
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: fds[1],
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ts = libc::timespec {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_nsec: wait.subsec_nanos() as libc::c_long,
        };
        // SAFETY: ppoll on two pollfds we own, a valid timespec, no signal mask.
        let n = unsafe { libc::ppoll(pfd.as_mut_ptr(), 2, &ts, std::ptr::null()) };
        if n <= 0 {
            continue;
        }
        for i in 0..2 {
            if pfd[i].revents & libc::POLLIN == 0 {
                continue;
            }
            loop {
                // SAFETY: read(2) into a buffer we own, at most its length.
                let r = unsafe { libc::read(fds[i], buf.as_mut_ptr().cast(), buf.len()) };
                if r <= 0 {
                    break;
                }
                if rng.next_f64() < impair.loss || lanes[i].queue.len() >= MAX_QUEUED {
                    continue;
                }
                let due = Instant::now() + impair.delay;
                lanes[i].queue.push_back((due, buf[..r as usize].to_vec()));
            }
        }
    }
}
