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
pub mod fastdp;
pub mod filestorage;
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

/// Buffers of 1 MiB and more (a held request message of up to 16 MiB, a listing, a JTP BATCH's
/// ids) are mapped and unmapped by malloc rather than carved from its per-thread arenas. glibc
/// raises its mmap threshold each time such a buffer is freed, after which the next ones come
/// from the arenas and stay there once freed: a thousand connections taking turns with the
/// 64 MiB message budget left 236 MiB behind (370 MiB at the peak). The threshold is fixed at
/// 1 MiB, above the 256 KiB read and write buffers of a transfer: a threshold below those made
/// each 1 GiB upload cost the server about 15 % more CPU.
pub(crate) fn map_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's tuning; any value is valid for M_MMAP_THRESHOLD.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
