//! Time rules shared by FastDP's machines (fastdp.md 2.8, 2.10, 2.12): the connection
//! [`Limits`], the idle/stall clock of a reader, the Ack schedule of a data receiver, and the
//! client's retry [`Backoff`]. Time comes in as `Instant` arguments; nothing here reads a clock.

use std::time::{Duration, Instant};

/// Deadlines and thresholds of one connection (defaults of 2.12).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The request head must be complete within this (default 10 s; then `408`).
    pub head_timeout: Duration,
    /// The first JMSG after the 101 must be complete within this (default 10 s; `timeout`).
    pub header_timeout: Duration,
    /// Silence allowed between frames (default 60 s; `timeout`).
    pub idle: Duration,
    /// Inside a frame, at least [`stall_bytes`](Self::stall_bytes) (or the rest of the frame)
    /// must arrive per window of this length (default 30 s; `timeout`).
    pub stall_window: Duration,
    /// Default 64 KiB.
    pub stall_bytes: u64,
    /// Empty Acks while the whole file is verified (default every 10 s, F30).
    pub keepalive: Duration,
    /// An Ack goes out this long after the oldest unacknowledged chunk was stored (250 ms).
    pub ack_delay: Duration,
    /// ... or as soon as this many stored chunks are unacknowledged (64).
    pub ack_chunks: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            head_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            stall_window: Duration::from_secs(30),
            stall_bytes: 64 * 1024,
            keepalive: Duration::from_secs(10),
            ack_delay: Duration::from_millis(250),
            ack_chunks: 64,
        }
    }
}

/// The stall window inside a frame.
#[derive(Clone, Copy, Debug)]
struct Window {
    start: Instant,
    got: u64,
    need: u64,
}

/// The idle and stall rules of a reader (F29).
#[derive(Clone, Copy, Debug)]
pub(crate) struct InputClock {
    last: Instant,
    window: Option<Window>,
}

impl InputClock {
    pub(crate) fn new(now: Instant) -> InputClock {
        InputClock {
            last: now,
            window: None,
        }
    }

    /// `n` bytes arrived; `remaining` is what is left of the frame they belong to (`None` when
    /// they ended it, or when they were not inside a frame).
    pub(crate) fn input(
        &mut self,
        now: Instant,
        n: usize,
        remaining: Option<u64>,
        limits: &Limits,
    ) {
        if n == 0 {
            return;
        }
        self.last = now;
        let fresh = |rest: u64| Window {
            start: now,
            got: 0,
            need: rest.min(limits.stall_bytes),
        };
        // A frame whose last byte just arrived counts as ended.
        self.window = match (remaining.filter(|r| *r > 0), self.window) {
            (None, _) => None,
            (Some(rest), None) => Some(fresh(rest)),
            (Some(rest), Some(mut w)) => {
                w.got += n as u64;
                // Never ask for more than the frame still holds.
                w.need = w.need.min(w.got + rest);
                Some(if w.got >= w.need { fresh(rest) } else { w })
            }
        };
    }

    /// When the peer has been too slow: the stall window's end inside a frame, else the idle
    /// limit after the last byte.
    pub(crate) fn deadline(&self, limits: &Limits) -> Instant {
        match self.window {
            Some(w) => w.start + limits.stall_window,
            None => self.last + limits.idle,
        }
    }

    /// Restarts the idle count (a phase where silence was expected has ended).
    pub(crate) fn restart(&mut self, now: Instant) {
        self.last = now;
        self.window = None;
    }
}

/// When a data receiver acknowledges (F13): 64 stored chunks unacknowledged, 250 ms after the
/// oldest of them was stored, as soon as every chunk is held (and before answering a FIN, which
/// the machine handles).
#[derive(Debug, Default)]
pub(crate) struct AckSchedule {
    pending: Vec<u32>,
    oldest: Option<Instant>,
    all_held: bool,
}

impl AckSchedule {
    pub(crate) fn stored(&mut self, now: Instant, chunk: u32, all_held: bool) {
        if self.pending.is_empty() {
            self.oldest = Some(now);
        }
        self.pending.push(chunk);
        self.all_held |= all_held;
    }

    pub(crate) fn is_due(&self, now: Instant, limits: &Limits) -> bool {
        !self.pending.is_empty()
            && (self.pending.len() >= limits.ack_chunks
                || self.all_held
                || self.oldest.is_some_and(|t| now >= t + limits.ack_delay))
    }

    pub(crate) fn deadline(&self, limits: &Limits) -> Option<Instant> {
        self.oldest
            .filter(|_| !self.pending.is_empty())
            .map(|t| t + limits.ack_delay)
    }

    /// Hands out the chunks to acknowledge and starts a new batch.
    pub(crate) fn take(&mut self) -> Vec<u32> {
        self.oldest = None;
        std::mem::take(&mut self.pending)
    }
}

/// The client's retry schedule (2.10, F31): 1 s doubling, with up to 25 % jitter, never over
/// 60 s. The base stops at 48 s so that base plus jitter stays within 60 s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// Longest base delay (48 s + 25 % = 60 s).
    pub const MAX_BASE: Duration = Duration::from_secs(48);

    pub fn new() -> Backoff {
        Backoff::default()
    }

    /// The delay before the next attempt; `random` is any value the caller drew (uniform over
    /// `u32`), which adds `random / 2^32 * 25 %` of the base.
    pub fn next_delay(&mut self, random: u32) -> Duration {
        let base = Duration::from_secs(1u64 << self.attempt.min(6)).min(Backoff::MAX_BASE);
        self.attempt = self.attempt.saturating_add(1);
        let jitter_ns = (base.as_nanos() / 4 * u128::from(random)) >> 32;
        base + Duration::from_nanos(jitter_ns as u64)
    }

    /// Progress was made (a chunk acknowledged): start again from 1 s.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Attempts so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f31_backoff_from_1_s_to_60_s_with_jitter() {
        let mut b = Backoff::new();
        let lows: Vec<u64> = (0..9).map(|_| b.next_delay(0).as_secs()).collect();
        assert_eq!(lows, [1, 2, 4, 8, 16, 32, 48, 48, 48]);
        let mut b = Backoff::new();
        let highs: Vec<Duration> = (0..9).map(|_| b.next_delay(u32::MAX)).collect();
        assert!(highs[0] < Duration::from_millis(1250) && highs[0] > Duration::from_millis(1249));
        assert!(highs.iter().all(|d| *d < Duration::from_secs(60)));
        assert!(highs[8] > Duration::from_millis(59_999));
        assert_eq!(b.attempts(), 9);
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert_eq!(b.next_delay(1 << 31), Duration::from_millis(1125));
    }

    #[test]
    fn f13_ack_schedule_by_count_time_and_all_held() {
        let l = Limits::default();
        let t0 = Instant::now();
        let mut a = AckSchedule::default();
        assert!(!a.is_due(t0, &l));
        assert_eq!(a.deadline(&l), None);
        for i in 0..63 {
            a.stored(t0, i, false);
        }
        assert!(!a.is_due(t0, &l));
        assert_eq!(a.deadline(&l), Some(t0 + l.ack_delay));
        assert!(a.is_due(t0 + Duration::from_millis(250), &l));
        a.stored(t0, 63, false);
        assert!(a.is_due(t0, &l), "64 chunks");
        assert_eq!(a.take().len(), 64);
        assert!(!a.is_due(t0 + Duration::from_secs(9), &l));
        a.stored(t0, 99, true);
        assert!(a.is_due(t0, &l), "every chunk held");
    }

    #[test]
    fn f29_idle_and_stall_deadlines() {
        let l = Limits::default();
        let t0 = Instant::now();
        let mut c = InputClock::new(t0);
        assert_eq!(c.deadline(&l), t0 + l.idle);
        // A frame of 1 MiB starts: 64 KiB per 30 s are needed.
        let t1 = t0 + Duration::from_secs(5);
        c.input(t1, 8, Some(1 << 20), &l);
        assert_eq!(c.deadline(&l), t1 + l.stall_window);
        let t2 = t1 + Duration::from_secs(20);
        c.input(t2, 60_000, Some((1 << 20) - 60_000), &l);
        assert_eq!(c.deadline(&l), t1 + l.stall_window, "under 64 KiB so far");
        let t3 = t2 + Duration::from_secs(5);
        c.input(t3, 6_000, Some((1 << 20) - 66_000), &l);
        assert_eq!(
            c.deadline(&l),
            t3 + l.stall_window,
            "64 KiB in: a new window"
        );
        // The last 100 bytes of a frame only need to be those 100 bytes.
        let t4 = t3 + Duration::from_secs(1);
        c.input(t4, 1, Some(100), &l);
        assert_eq!(c.deadline(&l), t3 + l.stall_window);
        let t5 = t4 + Duration::from_secs(1);
        c.input(t5, 99, Some(1), &l);
        assert_eq!(
            c.deadline(&l),
            t3 + l.stall_window,
            "one byte of the frame still missing"
        );
        c.input(t5, 1, Some(0), &l);
        assert_eq!(c.deadline(&l), t5 + l.idle, "frame ended: idle rule");
        c.input(t5, 0, Some(5), &l);
        assert_eq!(c.deadline(&l), t5 + l.idle, "no bytes, no change");
        // A silence that was expected (a phase waiting on this side) ends: the count starts
        // again from then, and a stall window open before it is gone.
        c.input(t5, 8, Some(1 << 20), &l);
        let t6 = t5 + Duration::from_secs(100);
        c.restart(t6);
        assert_eq!(c.deadline(&l), t6 + l.idle);
    }
}
