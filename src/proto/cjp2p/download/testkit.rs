//! Test helpers shared by the downloader's unit tests.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Accept, Download, DownloadConfig, Request};

pub(super) const MS: Duration = Duration::from_millis(1);

pub(super) fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

pub(super) fn id() -> [u8; 32] {
    [0x42; 32]
}

pub(super) fn one_source(eof: Option<u64>) -> (Download, Instant, SocketAddr) {
    let t0 = Instant::now();
    let mut dl = Download::new(id(), DownloadConfig::default(), eof);
    dl.add_source(t0, addr(1), None);
    (dl, t0, addr(1))
}

impl Download {
    /// The source's request size as if it had grown to its ceiling on a clean path (tests of
    /// what happens to large requests need not first walk the size up).
    pub(super) fn grown(&mut self, addr: SocketAddr) {
        let s = self.sources.iter_mut().find(|s| s.addr == addr).unwrap();
        s.size.grow_to_ceiling();
    }
}

pub(super) fn drain(dl: &mut Download, now: Instant) -> Vec<Request> {
    std::iter::from_fn(|| dl.poll_request(now)).collect()
}

/// Answers every request in `reqs` fully, as a reference seeder with file length `eof` would.
pub(super) fn answer_all(dl: &mut Download, now: Instant, reqs: &[Request], eof: u64) {
    for r in reqs {
        let n = u64::from(r.length)
            .min(40960)
            .min(eof.saturating_sub(r.offset)) as usize;
        if let Accept::Store { offset, len } = dl.on_content(now, r.to, r.offset, n, Some(eof)) {
            dl.mark_stored(offset, len);
        }
    }
}
