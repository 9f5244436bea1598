//! Moving a catalog file's bytes onto a stream, shared by every protocol driver that serves
//! files (JTP packets, TEJ frames, ...).
//!
//! Paths, by transport:
//! - plain TCP or Unix, files of at least [`ZERO_COPY_MIN`] bytes: `send(2)` straight from the
//!   file mapping (the kernel copies; userspace never touches the mapped pages, so a truncated
//!   file gives EFAULT instead of SIGBUS), except the last [`TAIL`] bytes;
//! - TLS, small files and every file's tail: `pread(2)` into the caller's output buffer.
//!
//! Consistency: the tail is read, then the open file is checked against the stamp taken when it
//! was opened (size, mtime, ctime, inode); only if it is unchanged do the final bytes go out.
//! Otherwise the caller must close the connection: a peer never receives the final byte of a
//! file whose bytes may differ from what its header promised.

use std::io::{self, Write};

use crate::catalog::MappedFile;
use crate::transport::Stream;

/// Files at least this large go zero-copy on plain sockets.
pub const ZERO_COPY_MIN: u64 = 256 * 1024;
/// Bytes at the end of each file read and checked before they are written.
pub const TAIL: u64 = 64 * 1024;
/// Most bytes handed to one send(2) from a mapping.
const SEND_CHUNK: u64 = 4 << 20;
/// The output buffer is written out when it grows past this.
pub const OUT_FLUSH: usize = 256 * 1024;

/// Why a file could not be sent whole.
#[derive(Debug)]
pub enum SendError {
    /// The file changed, shrank or vanished after it was announced.
    FileChanged,
    /// Writing to the peer failed or timed out.
    Io(io::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::FileChanged => write!(f, "file changed while being sent"),
            SendError::Io(e) => write!(f, "i/o: {e}"),
        }
    }
}

impl From<io::Error> for SendError {
    fn from(e: io::Error) -> Self {
        SendError::Io(e)
    }
}

/// Writes `out` to the stream and empties it.
pub fn flush(stream: &mut Stream, out: &mut Vec<u8>) -> io::Result<()> {
    if !out.is_empty() {
        stream.write_all(out)?;
        out.clear();
    }
    stream.flush()
}

/// Appends the whole of `file` to the stream. Bytes already in `out` (a header) go first; small
/// files stay in `out` for the caller to batch with what follows (it flushes past
/// [`OUT_FLUSH`]).
pub fn send_file(
    stream: &mut Stream,
    out: &mut Vec<u8>,
    file: &MappedFile,
) -> Result<(), SendError> {
    let len = file.len();
    let tail_start = len.saturating_sub(TAIL);
    let mut off = 0u64;
    if len >= ZERO_COPY_MIN {
        if let Some(fd) = stream.plain_fd() {
            flush(stream, out)?;
            let timeout = stream.write_timeout();
            while off < tail_start {
                let want = (tail_start - off).min(SEND_CHUNK) as usize;
                let started = std::time::Instant::now();
                let n = file.send_to(fd, off, want).map_err(|e| {
                    if e.raw_os_error() == Some(libc::EFAULT) {
                        SendError::FileChanged
                    } else {
                        SendError::Io(e)
                    }
                })?;
                if n == 0 {
                    return Err(SendError::FileChanged);
                }
                // A blocking send(2) returns short only when SO_SNDTIMEO expired mid-call: the
                // peer stopped reading. Stop now rather than wait a second timeout in the next
                // call (no write progress for the timeout ends the connection).
                if n < want && timeout.is_some_and(|t| started.elapsed() >= t) {
                    return Err(SendError::Io(io::ErrorKind::TimedOut.into()));
                }
                off += n as u64;
            }
        }
    }
    // Whole chunks before the tail go through one reused buffer of this thread, written out at
    // once: growing `out` for each would zero 256 KiB before every read (4% of a TLS server's
    // time on a 1 GiB file).
    if off + OUT_FLUSH as u64 <= tail_start {
        flush(stream, out)?;
        thread_local! {
            static CHUNK: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        CHUNK.with_borrow_mut(|buf| -> Result<(), SendError> {
            buf.resize(OUT_FLUSH, 0);
            while off + (OUT_FLUSH as u64) <= tail_start {
                read_full_at(file, off, buf)?;
                stream.write_all(buf)?;
                off += OUT_FLUSH as u64;
            }
            Ok(())
        })?;
    }
    while off < len {
        let chunk = (len - off).min(OUT_FLUSH as u64) as usize;
        let start = out.len();
        out.resize(start + chunk, 0);
        if let Err(e) = read_full_at(file, off, &mut out[start..]) {
            out.truncate(start);
            return Err(e);
        }
        off += chunk as u64;
        if off == len {
            if !file.is_unchanged() {
                out.truncate(start);
                return Err(SendError::FileChanged);
            }
        } else {
            flush(stream, out)?;
        }
    }
    if len == 0 && !file.is_unchanged() {
        return Err(SendError::FileChanged);
    }
    if out.len() >= OUT_FLUSH {
        flush(stream, out)?;
    }
    Ok(())
}

/// Fills `buf` from `file` at `off` (`read_at` already retries EINTR); a file that ends early
/// has changed.
fn read_full_at(file: &MappedFile, off: u64, buf: &mut [u8]) -> Result<(), SendError> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(off + got as u64, &mut buf[got..])? {
            0 => return Err(SendError::FileChanged),
            n => got += n,
        }
    }
    Ok(())
}
