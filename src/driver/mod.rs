//! Drivers: the only code that knows both a protocol machine (from [`crate::proto`]) and the
//! outside world (sockets from [`crate::transport`], files from [`crate::catalog`] and
//! [`crate::ingest`], threads and clocks). Each protocol role has one driver here: it writes what
//! its machine wants sent, reads and feeds what arrives, fires the machine's timeouts and moves
//! bulk bytes between files and sockets through [`bulk`], never through the machine.
//!
//! Out of scope: parsing and protocol decisions (the machines), listening, accepting and
//! connection setup (the [`crate::server`] core), and anything the command line prints.

pub mod bulk;
pub mod cjp2p;
pub mod jtp;
pub mod progress;
pub mod sync;
pub mod tej;

/// Removes the streaming temporaries (`.ferry-*.part`) that processes which no longer run left in
/// a client's output folder (killed, or stopped by a second Ctrl-C), and says how many on stderr.
/// A client calls it before it writes there; temporaries of live processes are left alone.
pub(crate) fn clean_stale_temporaries(ingest: &crate::ingest::IngestDir) {
    match ingest.clean_stale() {
        Ok(0) => {}
        Ok(n) => eprintln!(
            "ferry: removed {n} temporary file{} left in {} by an interrupted run",
            if n == 1 { "" } else { "s" },
            ingest.dest().display()
        ),
        Err(e) => eprintln!(
            "ferry: looking for stale temporaries in {}: {e}",
            ingest.dest().display()
        ),
    }
}
