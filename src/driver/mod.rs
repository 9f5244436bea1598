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
