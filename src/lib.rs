//! ferry: fast, safe file-transfer servers and clients over one shared catalog.
//!
//! Layers, from the bottom up:
//! - [`catalog`]: the served folder, scanned, hashed once (xxHash64 and SHA-256, kept in a
//!   persistent index under `.ferry/`) and memory-mapped; immutable snapshots swapped on rescan.
//! - [`dir`]: folders opened once, and files opened relative to them so that no local user
//!   racing ferry can redirect an open (symlinks resolved beneath the folder, state folders
//!   private, state files created `O_EXCL | O_NOFOLLOW`).
//! - [`ingest`]: the one way bytes from the network become a file in a folder: preallocated
//!   temporary file, positional writes, persisted block bitmap, verification, atomic rename.
//! - [`wire`]: the byte-level pieces every codec shares: a bounded cursor, a length-prefixed
//!   frame accumulator, hex.
//! - [`names`]: turning names from the wire into safe basenames.
//! - [`transport`]: TCP, TLS (rustls), Unix and UDP sockets behind one small interface.
//! - [`server`]: blocking listeners, a bounded worker pool, timeouts and one shutdown path.
//! - [`proto`]: the protocols as pure codecs and state machines (no I/O).
//! - [`driver`]: the code that runs those machines over sockets and files.
//!
//! Out of scope for the library: argument parsing and exit codes, which live in `bin/ferry.rs`.

pub mod catalog;
pub mod config;
pub mod dir;
pub mod driver;
#[doc(hidden)]
pub mod fuzzing;
pub mod ingest;
pub mod names;
pub mod proto;
pub mod server;
pub mod transport;
pub mod wire;
