//! One source of a download and its congestion state (cjp2p.md 6.2, 6.3): the window (slow
//! start, halving on loss at most once per RTT), the pacing bucket, RTT smoothing and the RTO
//! with its back-off, and the requests in flight to it.
//!
//! Each source also has a standing, which decides how much it is trusted with:
//!
//! ```text
//!            data                 a request expired
//!   Fresh ─────────────> Active ─────────────────────> Lost
//!     │  \               ^  ^ │          data            │
//!     │   \ expired      │  │ └──────────────────────────┘
//!     │    └─────────────│──│────────────────────────> Lost
//!     │ teaser or        │  │ teaser or refused cookie (from Active or Lost)
//!     │ refused cookie   │  v
//!     v        data      │
//!   Handshaking ─────────┘ (a request expiring while Handshaking gives Lost)
//! ```
//!
//! - Fresh: nothing answered and nothing lost yet. A source named for the download gets the
//!   initial window; a `MaybeTheyHaveSome` hint gets one request, ever, until it answers, and
//!   is dropped if it answers nothing for 2 s (cjp2p.md 8).
//! - Active: has delivered data and lost nothing since: the full window, takes ranges that came
//!   back from other sources, makes endgame copies.
//! - Lost: a request of it expired and it has answered nothing since: one request at a time,
//!   and the ranges it lost go to active sources, not back to it.
//! - Handshaking: it answered with a teaser or its reply failed the cookie check (a restarted
//!   peer forgot ferry's cookie): one request at a time until data comes again.
//!
//! The RTO back-off stops at 1 s, so a source that starts late or comes back is tried again
//! within a second.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::size::Sizer;
use super::{MAX_BACKOFF_RTO, MAX_BURST, MAX_RTO, MIN_RTO, SUSPEND_AFTER};

#[derive(Clone, Copy, Debug)]
pub(super) struct Req {
    pub(super) len: u32,
    pub(super) sent: Instant,
    /// Retransmission deadline while live; forget time once expired.
    pub(super) deadline: Instant,
    /// Sent again to this source for this offset: no RTT sample (Karn).
    pub(super) is_retransmitted: bool,
    pub(super) expired_at: Option<Instant>,
    /// Sent while the source was Handshaking: only one such request is in flight at a time.
    pub(super) in_handshake: bool,
    /// The source's request size when it was sent (the `Sizer` counts outcomes per size).
    pub(super) size: u32,
}

/// How far a source is trusted (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    Fresh,
    Active,
    Lost,
    Handshaking,
}

/// The window before a decrease, kept until the expired requests that caused it are known to be
/// lost: if every one of them is answered after all (a spurious timeout: the RTO was too short,
/// or this process was not scheduled for a moment), the decrease is undone.
#[derive(Clone, Copy, Debug)]
pub(super) struct Undo {
    cwnd: u32,
    ssthresh: u32,
    /// Expired requests not answered yet.
    outstanding: u32,
}

#[derive(Debug)]
pub(super) struct Source {
    pub(super) id: u64,
    pub(super) addr: SocketAddr,
    pub(super) is_ferry: bool,
    /// Learnt from a `MaybeTheyHaveSome` hint rather than named for the download.
    pub(super) is_hint: bool,
    pub(super) standing: Standing,
    /// It has answered something (data, a teaser, a refused reply).
    pub(super) has_answered: bool,
    /// Current request length in bytes (multiple of 4096) and what it is based on.
    pub(super) size: Sizer,
    pub(super) cwnd: u32,
    pub(super) ssthresh: u32,
    /// Replies counted toward the next +1 in congestion avoidance.
    pub(super) ca_acked: u32,
    pub(super) srtt: Option<Duration>,
    pub(super) rttvar: Duration,
    pub(super) backoff: u32,
    pub(super) last_decrease: Option<Instant>,
    pub(super) undo: Option<Undo>,
    pub(super) tokens: f64,
    pub(super) refilled: Instant,
    pub(super) last_sent: Option<Instant>,
    /// Time of the oldest request sent since the source last answered.
    pub(super) silent_since: Option<Instant>,
    pub(super) reqs: HashMap<u64, Req>,
    /// Bytes of replies accepted from it.
    pub(super) delivered: u64,
    /// Live requests and the bytes they ask for.
    pub(super) live: usize,
    pub(super) live_bytes: u64,
    /// Live requests sent while Handshaking.
    pub(super) handshake_live: usize,
}

impl Source {
    pub(super) fn rtt_estimate(&self, initial: Duration) -> Duration {
        self.srtt.unwrap_or(initial)
    }

    pub(super) fn base_rto(&self, initial: Duration) -> Duration {
        match self.srtt {
            None => initial,
            Some(s) => (s + 4 * self.rttvar).clamp(MIN_RTO, MAX_RTO),
        }
    }

    pub(super) fn rto(&self, initial: Duration) -> Duration {
        let base = self.base_rto(initial);
        let backed = base.saturating_mul(1 << self.backoff.min(10));
        backed.min(MAX_BACKOFF_RTO.max(base))
    }

    /// Whether its window allows one more request now (pacing and the byte budget aside).
    /// A Handshaking source gets one request at a time of its own, whatever older requests are
    /// still in flight, so a refused or teased range is asked again at once.
    pub(super) fn has_window(&self, now: Instant) -> bool {
        if self.is_suspended(now) {
            return self.live < 1;
        }
        match self.standing {
            // One request, ever, until it answers (cjp2p.md 8).
            Standing::Fresh | Standing::Lost if self.is_hint && !self.has_answered => {
                self.last_sent.is_none()
            }
            Standing::Fresh | Standing::Active => self.live < self.cwnd as usize,
            Standing::Lost => self.live < 1,
            Standing::Handshaking => self.handshake_live < 1,
        }
    }

    /// A request became live.
    pub(super) fn add_live(&mut self, req: &Req) {
        self.live += 1;
        self.live_bytes += u64::from(req.len);
        if req.in_handshake {
            self.handshake_live += 1;
        }
    }

    /// A live request was answered, expired, teased or replaced.
    pub(super) fn drop_live(&mut self, req: &Req) {
        self.live -= 1;
        self.live_bytes -= u64::from(req.len);
        if req.in_handshake {
            self.handshake_live -= 1;
        }
    }

    /// A hint that has answered nothing yet: dropped after 2 s of silence.
    pub(super) fn is_untried_hint(&self) -> bool {
        self.is_hint && !self.has_answered
    }

    /// It answered with data.
    pub(super) fn on_data(&mut self, max_window: u32) {
        self.standing = Standing::Active;
        self.has_answered = true;
        self.on_progress(max_window);
    }

    /// It answered with a teaser, or its reply failed the cookie check.
    pub(super) fn on_teased(&mut self) {
        self.standing = Standing::Handshaking;
        self.has_answered = true;
    }

    /// One of its requests expired. A source already Lost only backs off further: the probes
    /// of a silent source do not halve the window again and again (RFC 5681 keeps ssthresh
    /// when a retransmission times out), so a source that comes back resumes at half its
    /// window rather than at 2.
    pub(super) fn on_expired(&mut self, now: Instant, initial: Duration, max_window: u32) {
        let was_lost = self.standing == Standing::Lost;
        self.standing = Standing::Lost;
        let (cwnd, ssthresh) = (self.cwnd, self.ssthresh);
        let decreased = !was_lost && self.on_loss(now, initial, max_window);
        if was_lost {
            self.back_off(now, initial);
        }
        match self.undo.as_mut() {
            Some(u) => u.outstanding += 1,
            None if decreased => {
                self.undo = Some(Undo {
                    cwnd,
                    ssthresh,
                    outstanding: 1,
                })
            }
            None => {}
        }
    }

    /// An expired request was answered after all (within the late-reply grace).
    pub(super) fn on_late_reply(&mut self) {
        if let Some(u) = self.undo.as_mut() {
            u.outstanding -= 1;
            if u.outstanding == 0 {
                self.cwnd = self.cwnd.max(u.cwnd);
                self.ssthresh = self.ssthresh.max(u.ssthresh);
                self.undo = None;
            }
        }
    }

    /// An expired request will not be answered (forgotten, or asked again): the decrease
    /// stands.
    pub(super) fn on_really_lost(&mut self) {
        self.undo = None;
    }

    pub(super) fn is_suspended(&self, now: Instant) -> bool {
        self.silent_since
            .is_some_and(|t| now.saturating_duration_since(t) >= SUSPEND_AFTER)
    }

    pub(super) fn rate(&self, initial: Duration) -> f64 {
        let rtt = self.rtt_estimate(initial).as_secs_f64().max(1e-6);
        f64::from(self.cwnd) / rtt
    }

    pub(super) fn refill(&mut self, now: Instant, initial: Duration) {
        let dt = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate(initial)).min(MAX_BURST);
        self.refilled = now;
    }

    /// RFC 6298 smoothing.
    pub(super) fn on_rtt_sample(&mut self, r: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(s) => {
                let diff = s.abs_diff(r);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((s * 7 + r) / 8);
            }
        }
    }

    pub(super) fn on_progress(&mut self, max_window: u32) {
        self.backoff = 0;
        if self.cwnd < self.ssthresh {
            self.cwnd += 1;
        } else {
            self.ca_acked += 1;
            if self.ca_acked >= self.cwnd {
                self.ca_acked = 0;
                self.cwnd += 1;
            }
        }
        self.cwnd = self.cwnd.min(max_window.max(1));
    }

    /// A loss: halve at most once per RTT; the backoff doubles on the same schedule so that a
    /// whole window expiring at once counts as one timeout, not as many. True if it halved.
    pub(super) fn on_loss(&mut self, now: Instant, initial: Duration, max_window: u32) -> bool {
        if !self.back_off(now, initial) {
            return false;
        }
        self.ssthresh = (self.cwnd / 2).max(2);
        self.cwnd = self.ssthresh.min(max_window).max(1);
        self.ca_acked = 0;
        true
    }

    /// Doubles the RTO, at most once per RTT. True if it did.
    fn back_off(&mut self, now: Instant, initial: Duration) -> bool {
        let rtt = self.rtt_estimate(initial);
        if self
            .last_decrease
            .is_some_and(|t| now.saturating_duration_since(t) < rtt)
        {
            return false;
        }
        self.last_decrease = Some(now);
        self.backoff = (self.backoff + 1).min(10);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::*;

    #[test]
    fn c27_cwnd_grows_on_success_and_never_exceeds_max_window() {
        let t0 = Instant::now();
        let cfg = DownloadConfig {
            max_window: 16,
            ..DownloadConfig::default()
        };
        let mut dl = Download::new(id(), cfg, Some(4 << 20));
        dl.add_source(t0, addr(1), None);
        let mut now = t0;
        let mut max_cwnd = 0;
        let mut grew = false;
        let mut rounds = 0;
        while !dl.is_complete() {
            rounds += 1;
            assert!(rounds < 10_000, "no progress");
            let before = dl.stats().sources[0].cwnd;
            let reqs = drain(&mut dl, now);
            assert!(reqs.len() <= 16);
            now += 10 * MS;
            answer_all(&mut dl, now, &reqs, 4 << 20);
            let after = dl.stats().sources[0].cwnd;
            grew |= after > before;
            max_cwnd = max_cwnd.max(after);
            assert!(after <= 16);
        }
        assert!(grew);
        assert_eq!(max_cwnd, 16);
    }

    #[test]
    fn c27_pacing_releases_at_most_4_back_to_back() {
        let t0 = Instant::now();
        let mut dl = Download::new(id(), DownloadConfig::default(), Some(64 << 20));
        dl.add_source(t0, addr(1), None);
        let mut now = t0;
        // Grow the window with prompt replies.
        for _ in 0..40 {
            let reqs = drain(&mut dl, now);
            assert!(reqs.len() <= 4, "burst of {}", reqs.len());
            now += 10 * MS;
            answer_all(&mut dl, now, &reqs, 64 << 20);
        }
        let st = dl.stats();
        assert!(st.sources[0].cwnd > 40, "cwnd {}", st.sources[0].cwnd);
        // A long stall refills the bucket to 4 only.
        now += Duration::from_millis(100);
        assert_eq!(drain(&mut dl, now).len(), 4);
        // The next slot is srtt / cwnd away and is what poll_timeout reports.
        let slot = dl.poll_timeout().unwrap();
        assert!(slot > now && slot < now + 2 * MS, "{:?}", slot - now);
        assert!(dl.poll_request(now).is_none());
        // Polled halfway, the bucket holds part of a token and the slot stays where it was:
        // it is what the missing part takes to refill.
        let half = now + (slot - now) / 2;
        assert!(dl.poll_request(half).is_none());
        let again = dl.poll_timeout().unwrap();
        let moved = again.max(slot) - again.min(slot);
        assert!(moved < Duration::from_micros(5), "{moved:?}");
        assert!(dl.poll_request(slot).is_some());
    }

    #[test]
    fn c27_loss_halves_cwnd_at_most_once_per_rtt() {
        let (mut dl, t0, _) = one_source(Some(64 << 20));
        let mut now = t0;
        for _ in 0..6 {
            let reqs = drain(&mut dl, now);
            now += 10 * MS;
            answer_all(&mut dl, now, &reqs, 64 << 20);
        }
        let cwnd = dl.stats().sources[0].cwnd;
        assert!(cwnd >= 20, "cwnd {cwnd}");
        // Send a window and lose all of it: the timers fire together; one decrease.
        let mut sent = 0;
        for _ in 0..20 {
            sent += drain(&mut dl, now).len();
            now += MS;
        }
        assert!(sent >= 8);
        let due = dl.poll_timeout().unwrap();
        now = now.max(due) + 20 * MS;
        dl.handle_timeout(now);
        let st = dl.stats();
        assert!(st.losses >= 8, "losses {}", st.losses);
        assert_eq!(st.sources[0].cwnd, (cwnd / 2).max(2));
        assert_eq!(st.sources[0].ssthresh, (cwnd / 2).max(2));
    }

    /// A spurious timeout is undone: when every expired request is answered late (within the
    /// grace), the window is what it was before the decrease; a live answer does not count.
    #[test]
    fn c27_a_window_lost_then_answered_late_is_restored() {
        let eof = 64 << 20;
        let (mut dl, t0, _) = one_source(Some(eof));
        let mut now = t0;
        for _ in 0..6 {
            let reqs = drain(&mut dl, now);
            now += 10 * MS;
            answer_all(&mut dl, now, &reqs, eof);
        }
        let cwnd = dl.stats().sources[0].cwnd;
        let mut lost = Vec::new();
        for _ in 0..20 {
            lost.extend(drain(&mut dl, now));
            now += MS;
        }
        let due = dl.poll_timeout().unwrap();
        now = now.max(due) + 20 * MS;
        dl.handle_timeout(now);
        assert_eq!(dl.stats().sources[0].cwnd, (cwnd / 2).max(2));
        // All but one answered late: the decrease stands so far.
        now += 10 * MS;
        answer_all(&mut dl, now, &lost[1..], eof);
        assert!(dl.stats().sources[0].cwnd < cwnd);
        answer_all(&mut dl, now, &lost[..1], eof);
        assert!(dl.stats().sources[0].cwnd >= cwnd, "undone");
    }

    #[test]
    fn bytes_in_flight_stay_within_max_bytes_in_flight() {
        let t0 = Instant::now();
        let cfg = DownloadConfig {
            max_bytes_in_flight: 3 * 4096,
            ..DownloadConfig::default()
        };
        let mut dl = Download::new(id(), cfg, Some(1 << 20));
        // Four sources, so that after the losses (one request each while Lost) the byte budget
        // is still what limits.
        for port in 1..=4 {
            dl.add_source(t0, addr(port), None);
        }
        assert_eq!(drain(&mut dl, t0).len(), 3);
        let t1 = t0 + 250 * MS;
        dl.handle_timeout(t1);
        assert_eq!(
            drain(&mut dl, t1).len(),
            3,
            "expired requests no longer count"
        );
        // A budget under one request: still one at a time, never none.
        let tiny = DownloadConfig {
            max_bytes_in_flight: 1000,
            ..DownloadConfig::default()
        };
        let mut dl = Download::new(id(), tiny, Some(1 << 20));
        dl.add_source(t0, addr(1), None);
        assert_eq!(drain(&mut dl, t0).len(), 1);
    }

    #[test]
    fn c28_rto_doubles_on_consecutive_timeouts_up_to_1s_and_karn_skips_retransmitted_samples() {
        let (mut dl, t0, a) = one_source(None);
        let mut now = t0;
        let mut gaps = Vec::new();
        for _ in 0..5 {
            let r = dl.poll_request(now).unwrap();
            assert_eq!(r.offset, 0);
            let due = dl.poll_timeout().unwrap();
            gaps.push(due - now);
            now = due;
            dl.handle_timeout(now);
        }
        // The back-off stops at 1 s, so a source that starts late is tried every second.
        assert_eq!(
            gaps,
            vec![250 * MS, 500 * MS, 1000 * MS, 1000 * MS, 1000 * MS]
        );
        // A reply to the retransmitted request gives no RTT sample (Karn), but resets backoff.
        dl.poll_request(now).unwrap();
        now += 30 * MS;
        assert!(matches!(
            dl.on_content(now, a, 0, 4096, Some(1 << 20)),
            Accept::Store { .. }
        ));
        let st = dl.stats();
        assert_eq!(st.sources[0].srtt, None);
        assert_eq!(st.sources[0].rto, 250 * MS);
    }

    #[test]
    fn rto_follows_srtt_within_20ms_and_2s() {
        let (mut dl, t0, a) = one_source(Some(1 << 20));
        let r = dl.poll_request(t0).unwrap();
        dl.on_content(t0 + MS, a, r.offset, 4096, Some(1 << 20));
        let st = dl.stats();
        assert_eq!(st.sources[0].srtt, Some(MS));
        assert_eq!(st.sources[0].rto, 20 * MS, "3 ms clamped up to 20 ms");
        let r = dl.poll_request(t0 + MS).unwrap();
        dl.on_content(
            t0 + Duration::from_secs(20),
            a,
            r.offset,
            4096,
            Some(1 << 20),
        );
        assert_eq!(dl.stats().sources[0].rto, 2000 * MS);
        // RFC 6298 from the first sample R: SRTT = R, RTTVAR = R/2, RTO = SRTT + 4 RTTVAR.
        let (mut dl, t0, a) = one_source(Some(1 << 20));
        let r = dl.poll_request(t0).unwrap();
        dl.on_content(t0 + 100 * MS, a, r.offset, 4096, Some(1 << 20));
        assert_eq!(dl.stats().sources[0].rto, 300 * MS);
    }
}
