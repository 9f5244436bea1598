//! Transfer progress as plain counters: client drivers add to them as bytes move (each read or
//! write, so a single 1 GiB file shows progress while it travels), and whoever wants to show
//! progress (the command line) takes a [`Snapshot`] whenever it likes.
//!
//! Out of scope: drawing, timing and threads. Nothing here prints, sleeps or spawns; the
//! counters are relaxed atomics, cheap enough to bump once per read or per file.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters shared between a client driver (and its worker threads) and a display.
#[derive(Debug, Default)]
pub struct Progress {
    bytes: AtomicU64,
    total_bytes: AtomicU64,
    items: AtomicU64,
    total_items: AtomicU64,
}

/// The counters at one moment. A total of `None` is not known (yet).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// File bytes moved so far (received into files, or sent from them).
    pub bytes: u64,
    pub total_bytes: Option<u64>,
    /// Files (images) completed so far.
    pub items: u64,
    pub total_items: Option<u64>,
}

impl Progress {
    pub fn new() -> Progress {
        Progress::default()
    }

    /// `n` more file bytes moved.
    pub fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` more files done.
    pub fn add_items(&self, n: u64) {
        self.items.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` more bytes are expected in all (a transfer planned, a repeat started).
    pub fn add_total_bytes(&self, n: u64) {
        self.total_bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` more files are expected in all.
    pub fn add_total_items(&self, n: u64) {
        self.total_items.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let known = |v: u64| (v > 0).then_some(v);
        Snapshot {
            bytes: self.bytes.load(Ordering::Relaxed),
            total_bytes: known(self.total_bytes.load(Ordering::Relaxed)),
            items: self.items.load(Ordering::Relaxed),
            total_items: known(self.total_items.load(Ordering::Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_up_and_unknown_totals_read_as_none() {
        let p = Progress::new();
        assert_eq!(p.snapshot(), Snapshot::default());
        p.add_bytes(10);
        p.add_bytes(5);
        p.add_items(1);
        p.add_total_items(3);
        let s = p.snapshot();
        assert_eq!(
            s,
            Snapshot {
                bytes: 15,
                total_bytes: None,
                items: 1,
                total_items: Some(3)
            }
        );
    }
}
