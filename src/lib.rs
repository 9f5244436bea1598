//! ferry: fast, safe file-transfer servers and clients over one shared catalog.
//!
//! Layers, from the bottom up:
//! - [`catalog`]: the served folder, scanned, hashed once (xxHash64 and SHA-256, kept in a
//!   persistent index and its journal under `.ferry/`) and memory-mapped; it follows the folder
//!   live (inotify, or polling) and publishes each change incrementally as a new immutable
//!   snapshot that shares all but O(log n) nodes with the last, so readers never wait.
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
//!
//! # Unsafe code
//!
//! Every `unsafe` block is a system call the standard library does not offer, or the mapping,
//! each with a `SAFETY` comment on the contract and what upholds it. They sit in the modules
//! that own the resource, not in one place:
//! - `catalog/mapped.rs`: the one `unsafe` data structure, the read-only `mmap` of a served
//!   file (`Send`/`Sync`, `munmap`, and `send(2)`/`write(2)` straight from the mapping onto a
//!   socket or pipe); userspace never reads the mapped bytes.
//! - `catalog/inotify.rs`: `inotify_init1`, `inotify_add_watch`, `read` and `poll`.
//! - [`ingest`]: `statfs`/`statvfs` (tmpfs and free space), `fallocate`, `renameat2`
//!   (`RENAME_NOREPLACE`), `flock` on a part, `kill(pid, 0)` for a stale lock's owner.
//! - [`transport`]: a non-blocking `recv(MSG_DONTWAIT)` peek at a blocking socket, `poll`,
//!   and `setsockopt`/`getsockopt` for buffer sizes.
//! - [`server`]: `poll` in the accept loop, an `eventfd` to wake it, `shutdown(2)` of idle
//!   connections at shutdown, `malloc_trim` after a burst, and the SIGHUP handler.
//!
//! Tests add a few more (socket pairs, pipes, raw capture sockets), each with its note.
//! The codecs and machines ([`proto`], [`wire`], [`names`]) and the drivers hold none.

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
