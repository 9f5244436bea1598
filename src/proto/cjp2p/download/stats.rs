//! A download's counters and each source's congestion state, for logs and tests.

use std::net::SocketAddr;
use std::time::Duration;

use super::{Download, Standing};

/// Counters for logs and tests.
#[derive(Clone, Debug, Default)]
pub struct DownloadStats {
    /// Requests handed out by `poll_request`.
    pub requests_sent: u64,
    /// Requests for ranges that were requested before (after a loss, teaser or short reply).
    pub retransmits: u64,
    /// Endgame copies (a range asked from a second source while still in flight).
    pub endgame_copies: u64,
    /// Expired requests.
    pub losses: u64,
    /// Replies whose blocks were all already accepted.
    pub dup_replies: u64,
    pub teasers: u64,
    /// Replies that failed the cookie check for a request in flight (`on_refused`).
    pub refused: u64,
    /// Elements dropped (`Drop` and `DropSource`).
    pub dropped: u64,
    /// Sources removed for silence, bad data or a conflicting `eof`.
    pub sources_dropped: u64,
    /// `restart_after_mismatch` calls.
    pub restarts: u32,
    pub sources: Vec<SourceStats>,
}

/// One source's congestion state.
#[derive(Clone, Debug)]
pub struct SourceStats {
    pub addr: SocketAddr,
    pub is_ferry: bool,
    /// Learnt from `MaybeTheyHaveSome` rather than named for the download.
    pub is_hint: bool,
    pub standing: Standing,
    /// Bytes of replies accepted from it.
    pub delivered: u64,
    /// Its current request size (grows while answers arrive cleanly; see `size`).
    pub block_size: u32,
    /// Times its request size was halved because large answers went missing.
    pub size_shrinks: u32,
    pub cwnd: u32,
    pub ssthresh: u32,
    pub srtt: Option<Duration>,
    pub rto: Duration,
    pub in_flight: usize,
    pub is_suspended: bool,
}

impl Download {
    /// Requests sent, retransmits, losses, duplicate replies, per-source cwnd/srtt.
    pub fn stats(&self) -> DownloadStats {
        let mut st = self.stats.clone();
        let initial = self.cfg.initial_rto;
        let now = self.last_poll;
        st.sources = self
            .sources
            .iter()
            .map(|s| SourceStats {
                addr: s.addr,
                is_ferry: s.is_ferry,
                is_hint: s.is_hint,
                standing: s.standing,
                delivered: s.delivered,
                block_size: s.size.block(),
                size_shrinks: s.size.shrinks(),
                cwnd: s.cwnd,
                ssthresh: s.ssthresh,
                srtt: s.srtt,
                rto: s.rto(initial),
                in_flight: s.live,
                is_suspended: now.is_some_and(|t| s.is_suspended(t)),
            })
            .collect();
        st
    }
}
