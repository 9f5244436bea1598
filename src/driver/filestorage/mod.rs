//! filestorage drivers (filestorage.md): the service the server core runs on every endpoint
//! ([`server::FilestorageService`]: Unix socket, TCP with the tcpd preamble, TLS), the on-disk
//! store behind it ([`store::Store`]: `.ferry/filestorage/` of spec 7, recovery, quotas,
//! retention, publication into the catalog), and the client ([`client`]: `put`, `query`,
//! `fetch`, with reconnection and stateless resume).
//!
//! ```text
//!   Stream ─► server::serve: read within input_room ─► proto Connection ─► events
//!     ▲            Authenticate ──► Store::authenticate (plan, per-uid reserve, state.json)
//!     │            Write ─────────► Store::begin_write (claim, pwrite) ─┐ group commit:
//!     │            Query / Fetch ─► index / object or catalog mapping   │ fdatasync parts,
//!     │                                                                 │ journal + fdatasync,
//!     └──────── replies in order (poll_transmit) ◄── answers ◄──────────┘ completion (7.2)
//! ```
//!
//! Storage choice: the store keeps its own parts (`partial/<fid>/<file>.part`, positional
//! writes, `fdatasync`) with the 16-byte journal of spec 7.1 rather than ingest's transfer
//! registry, whose bitmap and work folder are a different on-disk contract; ingest is reused for
//! free space and for the copy fallback of publication, and the catalog for serving and for
//! registering published files without a rescan.
//!
//! Out of scope: the wire (the pure machines in [`crate::proto::filestorage`]), listening and
//! connection set-up ([`crate::server`]), the command line.

pub mod client;
mod disk;
mod recover;
mod remove;
pub mod server;
pub mod store;
mod transfer;

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};

use crate::dir::Dir;
use crate::proto::filestorage::token::JwtKey;

pub use remove::{remove, Removed};
pub use server::FilestorageService;
pub use store::{Store, StoreError, StoreOptions};

/// The service name: the Unix socket's name and the TCP preamble (spec 1.1 `service`).
pub const DEFAULT_SERVICE: &str = "filestorage";
/// Plain TCP listen address (tcpd's default, spec 1.1 `bind`).
pub const DEFAULT_BIND: &str = "127.0.0.1:9000";
/// libIPC's run directory when neither `--rundir` nor `RUNDIR` names one: a fixed folder of
/// the system-wide temporary directory (libIPC ignores `TMPDIR`, and so does ferry, so that
/// libIPC clients find the socket).
pub const LIBIPC_RUNDIR: &str = "/tmp/.libipc-run";
/// What a tcpd answers to a good service name.
pub const PREAMBLE_OK: &[u8] = b"ok";

/// The run directory: `--rundir`, else `$RUNDIR`, else [`LIBIPC_RUNDIR`] (spec 3.1).
pub fn rundir(flag: Option<&Path>) -> PathBuf {
    if let Some(d) = flag {
        return d.to_path_buf();
    }
    match std::env::var_os("RUNDIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(LIBIPC_RUNDIR),
    }
}

/// The store folder of a served folder's state folder: `<root>/.ferry/filestorage`.
pub fn store_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("filestorage")
}

/// The store folder of a served folder, `<root>/.ferry/filestorage`, opened from the
/// catalog's `.ferry` descriptor (never by path), created 0700 if missing and checked private
/// (ours, writable by nobody else): whoever could swap it could plant the JWT key.
pub fn open_store_dir(state: &Dir) -> io::Result<Dir> {
    state.private_subdir("filestorage", true)
}

/// Largest key file read.
const MAX_KEY_FILE: u64 = 64 * 1024;

/// The JWT key (spec 5): the bytes of `key_file` with one trailing `\n` removed, or the key
/// generated on first use into `<store>/jwt.key` (32 random bytes as 64 hex digits and `\n`,
/// mode 0600), read and created through the store folder's descriptor without following a
/// link. An empty key is an error: the server must not start with it.
pub fn load_key(store: &Dir, key_file: Option<&Path>) -> Result<JwtKey, StoreError> {
    let io_err = |what: String| move |source| StoreError::Io { what, source };
    let (path, bytes) = match key_file {
        Some(p) => (
            p.to_path_buf(),
            std::fs::read(p).map_err(io_err(format!("read {}", p.display())))?,
        ),
        None => {
            let name = OsStr::new("jwt.key");
            let p = store.join(name);
            match read_key(store, name) {
                Ok(b) => (p, b),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let mut random = [0u8; 32];
                    fill_random(&mut random).map_err(io_err("read /dev/urandom".into()))?;
                    let contents = JwtKey::generated_file_contents(&random);
                    write_new_key(store, name, &contents)
                        .map_err(io_err(format!("write {}", p.display())))?;
                    // Another process may have won the race: read what is there.
                    let b =
                        read_key(store, name).map_err(io_err(format!("read {}", p.display())))?;
                    (p, b)
                }
                Err(e) => return Err(io_err(format!("read {}", p.display()))(e)),
            }
        }
    };
    JwtKey::from_file_bytes(&bytes).map_err(|_| StoreError::EmptyKey(path))
}

/// The key file `name` of the store: `O_NOFOLLOW | O_NONBLOCK`, a regular file, bounded.
fn read_key(store: &Dir, name: &OsStr) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut b = Vec::new();
    store
        .open_read(name)?
        .take(MAX_KEY_FILE)
        .read_to_end(&mut b)?;
    Ok(b)
}

/// Creates the key file 0600 with `contents` (`O_EXCL | O_NOFOLLOW`), durably; an existing
/// file is left alone.
fn write_new_key(store: &Dir, name: &OsStr, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut f = match store.create_new(name, 0o600) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    };
    f.write_all(contents)?;
    f.sync_all()?;
    store.sync()
}

/// A path that reaches the folder open as `dir` through its descriptor: see
/// [`Dir::anchored_path`].
pub fn anchored_path(dir: &Dir) -> io::Result<PathBuf> {
    dir.anchored_path()
}

/// Fills `buf` from the kernel's random source.
pub fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// Unix seconds now.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
