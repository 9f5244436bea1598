//! Two small books the node keeps about what others ask of it: the repeat limiter (an address
//! asking the very same `PleaseSendContent` again and again gets a few answers per second, not
//! one per request) and, when `log_activity` is on, a ledger of what was served and refused to
//! whom, which the driver prints with `-v` so that a node serving nothing can be seen to.
//!
//! Both are bounded: at most [`MAX_TRACKED`] addresses, [`MAX_REPEAT_KEYS`] requests per
//! address, [`MAX_LEDGER`] ledger lines between two `take`s (the rest is summed in one line).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::NodeConfig;
use crate::proto::cjp2p::wire::Id;

/// Most addresses the repeat limiter remembers (it forgets them all beyond, once a second).
pub const MAX_TRACKED: usize = 65_536;
/// Most distinct requests remembered per address within one second.
pub const MAX_REPEAT_KEYS: usize = 16;
/// Most (address, id) lines in the ledger between two takes.
pub const MAX_LEDGER: usize = 1024;

const WINDOW: Duration = Duration::from_secs(1);

/// A request as the repeat limiter sees it: (id, offset, length).
pub type RequestKey = (Id, u64, u64);

/// Per address, the requests of the current one-second window and how often each came.
#[derive(Debug, Default)]
pub struct Repeats {
    by_addr: HashMap<SocketAddr, (Instant, Vec<(RequestKey, u32)>)>,
}

impl Repeats {
    /// Whether this request from `from` may be answered: at most `limit` identical ones per
    /// second (0: no limit).
    pub fn allow(&mut self, now: Instant, from: SocketAddr, key: RequestKey, limit: u32) -> bool {
        if limit == 0 {
            return true;
        }
        if self.by_addr.len() >= MAX_TRACKED && !self.by_addr.contains_key(&from) {
            self.by_addr
                .retain(|_, (start, _)| now.saturating_duration_since(*start) < WINDOW);
            if self.by_addr.len() >= MAX_TRACKED {
                self.by_addr.clear();
            }
        }
        let (start, keys) = self.by_addr.entry(from).or_insert((now, Vec::new()));
        if now.saturating_duration_since(*start) >= WINDOW {
            *start = now;
            keys.clear();
        }
        match keys.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) if *n >= limit => false,
            Some((_, n)) => {
                *n += 1;
                true
            }
            None => {
                if keys.len() >= MAX_REPEAT_KEYS {
                    keys.remove(0);
                }
                keys.push((key, 1));
                true
            }
        }
    }
}

/// One line of the ledger: what one address got for one id (or for lists when `id` is None)
/// since the last take.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    pub peer: Option<SocketAddr>,
    pub id: Option<Id>,
    /// `Content` answers with data, and their bytes.
    pub served: u64,
    pub bytes: u64,
    /// 32-byte teasers to an unverified requester.
    pub teasers: u64,
    /// `ContentList` answers.
    pub lists: u64,
    /// Requests not answered, and the last reason.
    pub refused: u64,
    pub why: Option<&'static str>,
}

/// What was served and refused, keyed by (address, id); `peer: None` sums what did not fit.
#[derive(Debug, Default)]
pub struct Ledger {
    lines: HashMap<(SocketAddr, Option<Id>), Activity>,
    overflow: Activity,
}

impl Ledger {
    fn line(&mut self, peer: SocketAddr, id: Option<Id>) -> &mut Activity {
        if self.lines.len() >= MAX_LEDGER && !self.lines.contains_key(&(peer, id)) {
            return &mut self.overflow;
        }
        self.lines.entry((peer, id)).or_insert_with(|| Activity {
            peer: Some(peer),
            id,
            ..Activity::default()
        })
    }

    pub fn served(
        &mut self,
        cfg: &NodeConfig,
        peer: SocketAddr,
        id: Id,
        bytes: usize,
        teaser: bool,
    ) {
        if !cfg.log_activity {
            return;
        }
        let l = self.line(peer, Some(id));
        if teaser {
            l.teasers += 1;
        } else {
            l.served += 1;
            l.bytes += bytes as u64;
        }
    }

    pub fn listed(&mut self, cfg: &NodeConfig, peer: SocketAddr) {
        if cfg.log_activity {
            self.line(peer, None).lists += 1;
        }
    }

    pub fn refused(
        &mut self,
        cfg: &NodeConfig,
        peer: SocketAddr,
        id: Option<Id>,
        why: &'static str,
    ) {
        if !cfg.log_activity {
            return;
        }
        let l = self.line(peer, id);
        l.refused += 1;
        l.why = Some(why);
    }

    /// Every line since the last take, by address then id; the overflow line last.
    pub fn take(&mut self) -> Vec<Activity> {
        let mut v: Vec<Activity> = self.lines.drain().map(|(_, a)| a).collect();
        v.sort_by_key(|a| (a.peer, a.id));
        let overflow = std::mem::take(&mut self.overflow);
        if overflow != Activity::default() {
            v.push(overflow);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_requests_are_limited_per_second_and_per_address() {
        let t0 = Instant::now();
        let mut r = Repeats::default();
        let a: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:1".parse().unwrap();
        let k = ([1; 32], 0, 4096);
        let allowed = (0..100).filter(|_| r.allow(t0, a, k, 4)).count();
        assert_eq!(allowed, 4);
        assert!(r.allow(t0, b, k, 4), "another address has its own budget");
        assert!(
            r.allow(t0, a, ([1; 32], 4096, 4096), 4),
            "another request is not a repeat"
        );
        assert!(!r.allow(t0 + Duration::from_millis(999), a, k, 4));
        assert!(r.allow(t0 + WINDOW, a, k, 4), "a new second");
        assert!((0..10).all(|_| r.allow(t0, a, k, 0)), "0: no limit");
    }

    #[test]
    fn the_limiter_and_the_ledger_stay_bounded() {
        let t0 = Instant::now();
        let mut r = Repeats::default();
        for i in 0..(MAX_TRACKED as u32 + 10) {
            let a = SocketAddr::from((i.to_be_bytes(), 1));
            r.allow(t0, a, ([0; 32], 0, 1), 4);
        }
        assert!(r.by_addr.len() <= MAX_TRACKED);
        let a: SocketAddr = "192.0.2.1:1".parse().unwrap();
        for off in 0..100u64 {
            r.allow(t0, a, ([0; 32], off, 1), 4);
        }
        assert!(r.by_addr[&a].1.len() <= MAX_REPEAT_KEYS);

        let cfg = NodeConfig {
            log_activity: true,
            ..NodeConfig::default()
        };
        let mut l = Ledger::default();
        for i in 0..(MAX_LEDGER as u32 + 5) {
            let a = SocketAddr::from((i.to_be_bytes(), 1));
            l.served(&cfg, a, [0; 32], 100, false);
        }
        let lines = l.take();
        assert_eq!(lines.len(), MAX_LEDGER + 1);
        let last = lines.last().unwrap();
        assert_eq!((last.peer, last.served, last.bytes), (None, 5, 500));
        assert!(l.take().is_empty());
        // Off by default: nothing is kept.
        let mut l = Ledger::default();
        l.refused(&NodeConfig::default(), a, None, "x");
        assert!(l.take().is_empty());
    }
}
