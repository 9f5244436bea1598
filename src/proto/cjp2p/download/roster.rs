//! The sources of a download: sources named for it (the user's peers, holders it knows),
//! `MaybeTheyHaveSome` hints on probation (one request, dropped after 2 s of silence, not taken
//! again for a minute once dropped), whether each is ferry (its request length), and removal,
//! which sends a source's ranges in flight back to the front of the missing set.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::size::{request_limit_for_mtu, Sizer};
use super::source::{Source, Standing};
use super::MAX_BURST;
use super::MAX_PATH_LIMITS;
use super::{block_len, Download, FORGET_DEAD_HINT_AFTER, INITIAL_CWND, INITIAL_SSTHRESH};
use crate::transport::canonical_addr;

impl Download {
    /// Adds a source named for the download (or updates whether it is ferry). Ignored beyond
    /// `max_sources`. `ferry_max_length`: the peer's announced largest reply, if it is ferry.
    pub fn add_source(&mut self, now: Instant, addr: SocketAddr, ferry_max_length: Option<u32>) {
        let addr = canonical_addr(addr);
        if let Some(s) = self.sources.iter_mut().find(|s| s.addr == addr) {
            s.is_hint = false;
        } else {
            self.push_source(now, addr, false);
        }
        self.set_ferry(addr, ferry_max_length);
    }

    /// Adds a source learnt from a `MaybeTheyHaveSome` hint: on probation (one request, dropped
    /// if silent for 2 s) until it delivers. False when ignored: already a source, too many
    /// sources, or a hint that was dropped for silence in the last minute.
    pub fn add_hint(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        ferry_max_length: Option<u32>,
    ) -> bool {
        let addr = canonical_addr(addr);
        self.dead_hints
            .retain(|_, t| now.saturating_duration_since(*t) < FORGET_DEAD_HINT_AFTER);
        if self.dead_hints.contains_key(&addr) || self.sources.iter().any(|s| s.addr == addr) {
            return false;
        }
        if !self.push_source(now, addr, true) {
            return false;
        }
        self.set_ferry(addr, ferry_max_length);
        true
    }

    /// The path to `addr` has `mtu`-byte packets (the driver asks the kernel): requests to it
    /// stay small enough that an answer is at most a few IP fragments
    /// (`size::request_limit_for_mtu`), now and for a source added later. A lost fragment costs
    /// the whole answer and leaves its siblings in the receiver's reassembly queue for 30 s,
    /// so on a 1500-byte path a lossy link is not given the chance to fill that queue.
    pub fn set_path_mtu(&mut self, addr: SocketAddr, mtu: u32) {
        let addr = canonical_addr(addr);
        if self.path_limits.len() >= MAX_PATH_LIMITS && !self.path_limits.contains_key(&addr) {
            self.path_limits.clear();
        }
        self.path_limits.insert(addr, request_limit_for_mtu(mtu));
        if let Some(s) = self.sources.iter().find(|s| s.addr == addr) {
            let is_ferry = s.is_ferry;
            let ceiling = s.size.ceiling();
            self.apply_ceiling(addr, is_ferry, ceiling);
        }
    }

    /// The source is (or is not) a ferry peer announcing `max_length`: its request length
    /// follows (within the path's limit). Its requests in flight and its congestion state are
    /// kept.
    pub fn set_ferry(&mut self, addr: SocketAddr, ferry_max_length: Option<u32>) {
        let addr = canonical_addr(addr);
        let block = match ferry_max_length {
            Some(m) => block_len(self.cfg.ferry_block.min(m)),
            None => block_len(self.cfg.ref_block),
        };
        self.apply_ceiling(addr, ferry_max_length.is_some(), block);
    }

    fn apply_ceiling(&mut self, addr: SocketAddr, is_ferry: bool, block: u32) {
        let block = match self.path_limits.get(&addr) {
            Some(&limit) => block.min(limit),
            None => block,
        };
        if let Some(s) = self.sources.iter_mut().find(|s| s.addr == addr) {
            s.is_ferry = is_ferry;
            s.size.set_ceiling(block);
        }
    }

    pub(super) fn push_source(&mut self, now: Instant, addr: SocketAddr, is_hint: bool) -> bool {
        if self.sources.len() >= self.cfg.max_sources {
            return false;
        }
        self.next_source_id += 1;
        self.sources.push(Source {
            id: self.next_source_id,
            addr,
            is_ferry: false,
            is_hint,
            standing: Standing::Fresh,
            has_answered: false,
            size: Sizer::new(block_len(self.cfg.ref_block)),
            cwnd: INITIAL_CWND.min(self.cfg.max_window.max(1)),
            ssthresh: INITIAL_SSTHRESH,
            ca_acked: 0,
            srtt: None,
            rttvar: Duration::ZERO,
            backoff: 0,
            last_decrease: None,
            undo: None,
            tokens: MAX_BURST,
            refilled: now,
            last_sent: None,
            silent_since: None,
            reqs: HashMap::new(),
            delivered: 0,
            live: 0,
            live_bytes: 0,
            handshake_live: 0,
        });
        true
    }

    /// Seeds a source's RTT from the peer table (spec 6.3) when it has no sample of its own.
    pub fn set_initial_rtt(&mut self, addr: SocketAddr, rtt: Duration) {
        let addr = canonical_addr(addr);
        if let Some(s) = self.sources.iter_mut().find(|s| s.addr == addr) {
            if s.srtt.is_none() {
                s.on_rtt_sample(rtt);
            }
        }
    }

    /// Removes a source; its ranges in flight go back to the front of the missing set.
    pub fn remove_source(&mut self, addr: SocketAddr) {
        let addr = canonical_addr(addr);
        if let Some(si) = self.sources.iter().position(|s| s.addr == addr) {
            self.remove_source_at(si);
        }
    }

    pub fn sources(&self) -> Vec<SocketAddr> {
        self.sources.iter().map(|s| s.addr).collect()
    }

    /// Whether `addr` is a source of this download.
    pub fn has_source(&self, addr: SocketAddr) -> bool {
        let addr = canonical_addr(addr);
        self.sources.iter().any(|s| s.addr == addr)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::*;

    #[test]
    fn removed_source_ranges_go_to_another_source() {
        let t0 = Instant::now();
        let mut dl = Download::new(id(), DownloadConfig::default(), Some(1 << 20));
        dl.add_source(t0, addr(1), None);
        let first = drain(&mut dl, t0);
        assert_eq!(first.len(), 4);
        dl.add_source(t0, addr(2), None);
        dl.remove_source(addr(1));
        let second = drain(&mut dl, t0);
        let offs: Vec<_> = second.iter().map(|r| (r.to, r.offset)).collect();
        let want: Vec<_> = first.iter().map(|r| (addr(2), r.offset)).collect();
        assert_eq!(offs, want);
    }

    #[test]
    fn sources_are_capped_and_ipv4_mapped_addresses_normalised() {
        let t0 = Instant::now();
        let cfg = DownloadConfig {
            max_sources: 2,
            ..DownloadConfig::default()
        };
        let mut dl = Download::new(id(), cfg, None);
        dl.add_source(t0, "[::ffff:127.0.0.1]:1".parse().unwrap(), None);
        dl.add_source(t0, addr(1), None);
        dl.add_source(t0, addr(2), None);
        dl.add_source(t0, addr(3), None);
        assert_eq!(dl.sources(), vec![addr(1), addr(2)]);
    }

    fn ceiling_of(dl: &Download, a: SocketAddr) -> u32 {
        dl.sources
            .iter()
            .find(|s| s.addr == a)
            .unwrap()
            .size
            .ceiling()
    }

    /// Issue 14 (CJP2P over 20 ms / 1 % loss links): a 1500-byte path keeps requests at 4096
    /// bytes (4 fragments an answer) whether the limit comes before or after the source and
    /// its ferry announcement; loopback keeps ferry's 32 KiB; a 9000-byte path 24 KiB.
    #[test]
    fn the_path_mtu_caps_the_request_size_of_a_source() {
        use super::super::size::request_limit_for_mtu;
        assert_eq!(request_limit_for_mtu(1500), 4096);
        assert_eq!(request_limit_for_mtu(1280), 4096);
        assert_eq!(request_limit_for_mtu(9000), 24576);
        assert!(request_limit_for_mtu(65536) >= 40960);
        assert_eq!(request_limit_for_mtu(0), 4096);
        let t0 = Instant::now();
        let mut dl = Download::new(id(), DownloadConfig::default(), Some(1 << 20));
        // Limit first, then a ferry source.
        dl.set_path_mtu(addr(1), 1500);
        dl.add_source(t0, addr(1), Some(32768));
        assert_eq!(ceiling_of(&dl, addr(1)), 4096);
        // A ferry source first, then its limit; a later announcement stays within it.
        dl.add_source(t0, addr(2), Some(32768));
        assert_eq!(ceiling_of(&dl, addr(2)), 32768);
        dl.set_path_mtu(addr(2), 9000);
        assert_eq!(ceiling_of(&dl, addr(2)), 24576);
        dl.set_ferry(addr(2), Some(40960));
        assert_eq!(ceiling_of(&dl, addr(2)), 24576);
        // Learning another path's limit keeps the first one's (mutation sample F: `&&` as
        // `||` emptied the table at every new address): a later announcement stays within it.
        dl.set_ferry(addr(1), Some(40960));
        assert_eq!(ceiling_of(&dl, addr(1)), 4096);
        // Loopback: no limit below the configured size.
        dl.add_source(t0, addr(3), Some(32768));
        dl.set_path_mtu(addr(3), 65536);
        assert_eq!(ceiling_of(&dl, addr(3)), 32768);
        // Hints too.
        dl.set_path_mtu(addr(4), 1500);
        assert!(dl.add_hint(t0, addr(4), Some(32768)));
        assert_eq!(ceiling_of(&dl, addr(4)), 4096);
    }

    /// The table of path limits is bounded: full, a new address starts it afresh, and a new
    /// limit for an address already in it changes that entry only (mutation sample H: `delete
    /// !` grew the table past its bound with every new address and emptied it at every update).
    #[test]
    fn path_limits_stay_bounded_and_an_update_keeps_the_others() {
        let mut dl = Download::new(id(), DownloadConfig::default(), Some(1 << 20));
        let a = |i: usize| SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 4000));
        for i in 0..MAX_PATH_LIMITS {
            dl.set_path_mtu(a(i), 1500);
        }
        assert_eq!(dl.path_limits.len(), MAX_PATH_LIMITS);
        dl.set_path_mtu(a(7), 9000);
        assert_eq!(
            dl.path_limits.len(),
            MAX_PATH_LIMITS,
            "an update clears nothing"
        );
        assert_eq!(dl.path_limits[&a(0)], 4096);
        assert_eq!(dl.path_limits[&a(7)], 24576);
        dl.set_path_mtu(a(MAX_PATH_LIMITS), 1500);
        assert_eq!(dl.path_limits.len(), 1, "full: a new address starts afresh");
        assert_eq!(dl.path_limits[&a(MAX_PATH_LIMITS)], 4096);
    }

    /// Spec 6.3: a source's RTT is seeded from the peer table only while it has no sample of
    /// its own, and only for that source.
    #[test]
    fn an_initial_rtt_seeds_only_that_source_and_only_once() {
        let t0 = Instant::now();
        let mut dl = Download::new(id(), DownloadConfig::default(), Some(1 << 20));
        dl.add_source(t0, addr(1), None);
        dl.add_source(t0, addr(2), None);
        dl.set_initial_rtt(addr(1), 80 * MS);
        dl.set_initial_rtt(addr(1), 300 * MS);
        let srtt = |dl: &Download, a| {
            dl.stats()
                .sources
                .iter()
                .find(|s| s.addr == a)
                .unwrap()
                .srtt
        };
        assert_eq!(srtt(&dl, addr(1)), Some(80 * MS));
        assert_eq!(srtt(&dl, addr(2)), None);
    }

    #[test]
    fn hints_are_added_once_and_dead_ones_stay_out_for_a_minute() {
        let t0 = Instant::now();
        let mut dl = Download::new(id(), DownloadConfig::default(), Some(1 << 20));
        dl.add_source(t0, addr(1), None);
        assert!(!dl.add_hint(t0, addr(1), None), "already a source");
        assert!(dl.add_hint(t0, addr(2), None));
        assert!(!dl.add_hint(t0, addr(2), None));
        // One request, and no second one while it stays silent.
        let reqs = drain(&mut dl, t0);
        assert_eq!(reqs.iter().filter(|r| r.to == addr(2)).count(), 1);
        let mut now = t0;
        let mut dropped = None;
        while now < t0 + 2100 * MS {
            now += 50 * MS;
            dl.handle_timeout(now);
            let reqs = drain(&mut dl, now);
            assert!(reqs.iter().all(|r| r.to != addr(2)), "{reqs:?}");
            if dropped.is_none() && !dl.has_source(addr(2)) {
                dropped = Some(now);
            }
        }
        assert!(!dl.has_source(addr(2)), "dropped after 2 s of silence");
        // Kept out for exactly a minute from its drop.
        let dropped = dropped.unwrap();
        let minute = Duration::from_secs(60);
        assert!(!dl.add_hint(dropped + minute - MS, addr(2), None));
        assert!(dl.add_hint(dropped + minute, addr(2), None));
    }

    #[test]
    fn a_hint_that_answers_becomes_an_ordinary_source() {
        let t0 = Instant::now();
        let mut dl = Download::new(id(), DownloadConfig::default(), Some(1 << 20));
        assert!(dl.add_hint(t0, addr(2), Some(40960)));
        dl.grown(addr(2));
        let r = dl.poll_request(t0).unwrap();
        assert_eq!(r.length, 32768);
        assert!(dl.poll_request(t0).is_none());
        answer_all(&mut dl, t0 + 10 * MS, &[r], 1 << 20);
        let st = dl.stats();
        assert_eq!(st.sources[0].standing, Standing::Active);
        assert!(drain(&mut dl, t0 + 10 * MS).len() > 1);
        dl.handle_timeout(t0 + 5000 * MS);
        assert!(
            dl.has_source(addr(2)),
            "an answering hint is not dropped at 2 s"
        );
    }

    /// Becoming ferry raises the source's largest request to 32 KiB (the size then grows to it
    /// as clean answers come, see `size`); requests in flight are kept.
    #[test]
    fn set_ferry_changes_the_block_size_and_keeps_requests_in_flight() {
        let (mut dl, t0, a) = one_source(Some(4 << 20));
        let sent = drain(&mut dl, t0);
        dl.set_ferry(a, Some(40960));
        assert_eq!(dl.stats().sources[0].in_flight, sent.len());
        let mut now = t0 + MS;
        answer_all(&mut dl, now, &sent, 4 << 20);
        let mut biggest = 0;
        while !dl.is_complete() && biggest < 32768 {
            let reqs = drain(&mut dl, now);
            for r in &reqs {
                // Toward ferry, a request of a full size ends on a multiple of that size.
                let size = dl.stats().sources[0].block_size.max(r.length);
                assert_eq!(
                    (r.offset + u64::from(r.length)) % u64::from(size),
                    0,
                    "{r:?}"
                );
                biggest = biggest.max(r.length);
            }
            now += 5 * MS;
            answer_all(&mut dl, now, &reqs, 4 << 20);
        }
        assert_eq!(biggest, 32768);
    }
}
