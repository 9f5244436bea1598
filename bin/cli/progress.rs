//! The one progress line a client command draws on stderr while it transfers: counts, sizes and
//! rate from a library [`Progress`], redrawn ten times a second, erased at the end.
//!
//! Drawn only when stderr is a terminal and the output is not `--json`: a log file or a script
//! reading stderr never sees carriage returns or escape sequences. Out of scope: the counting
//! itself (the drivers update the counters as bytes move).

use std::io::{IsTerminal, Write};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ferry::driver::progress::{Progress, Snapshot};

/// How often the line is redrawn.
const REDRAW: Duration = Duration::from_millis(100);

/// What the counted items are called on the line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unit {
    Images,
    Files,
}

impl Unit {
    fn word(self) -> &'static str {
        match self {
            Unit::Images => "images",
            Unit::Files => "files",
        }
    }
}

/// Draws the line until dropped (or [`finish`](Self::finish)ed), then erases it.
pub(crate) struct Drawer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drawer {
    /// Starts drawing `progress` when stderr is a terminal and `json` is off; otherwise a
    /// drawer that draws nothing.
    pub(crate) fn start(progress: Arc<Progress>, unit: Unit, json: bool) -> Drawer {
        if json || !std::io::stderr().is_terminal() {
            return Drawer {
                stop: None,
                thread: None,
            };
        }
        let (tx, rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut drawn = false;
            // Until finished (a message, or the sender gone): redraw on every timeout.
            while let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(REDRAW) {
                let line = format_line(&progress.snapshot(), unit, started.elapsed());
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[K{line}");
                let _ = err.flush();
                drawn = true;
            }
            if drawn {
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[K");
                let _ = err.flush();
            }
        });
        Drawer {
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    /// Erases the line and waits until it is gone (before the summary is printed).
    pub(crate) fn finish(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Drawer {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// `12 / 300 images  3.4 / 10.0 MB  25.1 MB/s` (totals only when known).
fn format_line(s: &Snapshot, unit: Unit, elapsed: Duration) -> String {
    let mb = |b: u64| b as f64 / 1e6;
    let items = match s.total_items {
        Some(t) => format!("{} / {} {}", s.items, t, unit.word()),
        None => format!("{} {}", s.items, unit.word()),
    };
    let bytes = match s.total_bytes {
        Some(t) => format!("{:.1} / {:.1} MB", mb(s.bytes), mb(t)),
        None => format!("{:.1} MB", mb(s.bytes)),
    };
    let rate = mb(s.bytes) / elapsed.as_secs_f64().max(1e-3);
    format!("{items}  {bytes}  {rate:.1} MB/s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_shows_totals_only_when_known() {
        let s = Snapshot {
            bytes: 3_400_000,
            total_bytes: Some(10_000_000),
            items: 12,
            total_items: Some(300),
        };
        assert_eq!(
            format_line(&s, Unit::Images, Duration::from_secs(2)),
            "12 / 300 images  3.4 / 10.0 MB  1.7 MB/s"
        );
        let s = Snapshot {
            bytes: 1_000_000,
            total_bytes: None,
            items: 0,
            total_items: None,
        };
        assert_eq!(
            format_line(&s, Unit::Files, Duration::from_secs(1)),
            "0 files  1.0 MB  1.0 MB/s"
        );
    }
}
