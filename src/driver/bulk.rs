//! Moving a catalog file's bytes onto a stream, shared by every protocol driver that serves
//! files: whole files (JTP packets, TEJ frames) and byte ranges of them (FastDP pull chunks,
//! filestorage FETCH).
//!
//! Paths, by transport, for a range `offset..offset + len` of a file:
//! - plain TCP or Unix, ranges of at least [`ZERO_COPY_MIN`] bytes: `send(2)` straight from the
//!   file mapping (the kernel copies; userspace never touches the mapped pages, so a truncated
//!   file gives EFAULT instead of SIGBUS), except the range's last [`TAIL`] bytes;
//! - TLS, small ranges and every range's tail: `pread(2)` into a buffer of this thread or the
//!   caller's output buffer.
//!
//! Consistency: the tail of the range is read, then the open file is checked against the stamp
//! taken when it was opened (size, mtime, ctime, inode); only if it is unchanged do the final
//! bytes go out. Otherwise the caller must close the connection: a peer never receives the last
//! byte of a range whose bytes may differ from what the file held when it was announced. An
//! empty range sends nothing but is checked all the same.
//!
//! A range that does not lie inside the file (as opened) is refused before any byte, header
//! included, is written: [`SendError::Io`] of kind `InvalidInput`. Machines check ranges from
//! the wire against the entry's size first and answer with their own error; this is the last
//! guard.

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

/// Appends the whole of `file` to the stream: [`send_range`] from 0 to its length.
pub fn send_file(
    stream: &mut Stream,
    out: &mut Vec<u8>,
    file: &MappedFile,
) -> Result<(), SendError> {
    send_range(stream, out, file, 0, file.len())
}

/// Appends bytes `offset..offset + len` of `file` to the stream. Bytes already in `out` (a
/// header) go first; small ranges stay in `out` for the caller to batch with what follows (it
/// flushes past [`OUT_FLUSH`]). A range past the end of the file is an error before anything is
/// written (module doc).
pub fn send_range(
    stream: &mut Stream,
    out: &mut Vec<u8>,
    file: &MappedFile,
    offset: u64,
    len: u64,
) -> Result<(), SendError> {
    let end = match offset.checked_add(len) {
        Some(end) if end <= file.len() => end,
        _ => {
            return Err(SendError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "range of {len} bytes at {offset} is past the end of a {}-byte file",
                    file.len()
                ),
            )))
        }
    };
    let tail_start = end.saturating_sub(TAIL).max(offset);
    let mut off = offset;
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
                read_exact_at(file, off, buf)?;
                stream.write_all(buf)?;
                off += OUT_FLUSH as u64;
            }
            Ok(())
        })?;
    }
    while off < end {
        let chunk = (end - off).min(OUT_FLUSH as u64) as usize;
        let start = out.len();
        out.resize(start + chunk, 0);
        if let Err(e) = read_exact_at(file, off, &mut out[start..]) {
            out.truncate(start);
            return Err(e);
        }
        off += chunk as u64;
        if off == end {
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

/// [`MappedFile::read_exact_at`]; a file that ends early has changed.
fn read_exact_at(file: &MappedFile, off: u64, buf: &mut [u8]) -> Result<(), SendError> {
    file.read_exact_at(off, buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => SendError::FileChanged,
        _ => SendError::Io(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::tests::temp_dir;
    use crate::transport::{connect_tcp, TlsClient, TlsServer};
    use std::io::Read;
    use std::net::TcpListener;
    use std::os::unix::net::UnixStream;
    use std::path::{Path, PathBuf};
    use std::thread::JoinHandle;
    use std::time::Duration;

    const T: Duration = Duration::from_secs(10);
    /// Past the zero-copy threshold, several output chunks and one send(2) chunk.
    const LEN: usize = 5 * (1 << 20) + 12_345;

    #[derive(Clone, Copy, Debug)]
    enum Kind {
        Tcp,
        Unix,
        Tls,
    }

    fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 65_521) as u8).collect()
    }

    /// A connected (sender, reader) pair; the reader thread reads to end of stream.
    fn pair(kind: Kind, dir: &Path) -> (Stream, JoinHandle<Vec<u8>>) {
        let (sender, mut receiver) = match kind {
            Kind::Unix => {
                let (a, b) = UnixStream::pair().unwrap();
                (Stream::from(a), Stream::from(b))
            }
            Kind::Tcp | Kind::Tls => {
                let l = TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = l.local_addr().unwrap().to_string();
                let accepted = std::thread::spawn(move || {
                    let (s, _) = l.accept().unwrap();
                    s.set_read_timeout(Some(T)).unwrap();
                    s.set_write_timeout(Some(T)).unwrap();
                    s
                });
                let c = connect_tcp(&addr, T).unwrap();
                let s = accepted.join().unwrap();
                match kind {
                    Kind::Tcp => (Stream::Tcp(s), Stream::Tcp(c)),
                    _ => {
                        let alpn: &[&[u8]] = &[b"test/1"];
                        let (server, _, _) = TlsServer::self_signed(dir, alpn).unwrap();
                        let client =
                            TlsClient::new(Some(&dir.join("tls").join("cert.pem")), alpn).unwrap();
                        let h = std::thread::spawn(move || server.accept(s, T).unwrap());
                        let c = client.connect(c, "localhost", T).unwrap();
                        (h.join().unwrap(), c)
                    }
                }
            }
        };
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            receiver.read_to_end(&mut got).unwrap();
            got
        });
        (sender, reader)
    }

    fn file_with(dir: &Path, data: &[u8]) -> (PathBuf, MappedFile) {
        let path = dir.join("f.bin");
        std::fs::write(&path, data).unwrap();
        let m = MappedFile::open(&path).unwrap();
        (path, m)
    }

    /// Sends `HDR`, the range, and `END` over a fresh pair; returns what arrived and the
    /// outcome of the range.
    fn send(kind: Kind, dir: &Path, file: &MappedFile, off: u64, len: u64) -> (Vec<u8>, bool) {
        let (mut s, reader) = pair(kind, dir);
        let mut out = b"HDR".to_vec();
        let r = send_range(&mut s, &mut out, file, off, len);
        let ok = r.is_ok();
        if ok {
            out.extend_from_slice(b"END");
        }
        // The sender ends the stream either way; what the peer saw is what it got.
        let _ = flush(&mut s, &mut out);
        s.close_gracefully(Duration::from_millis(100));
        (reader.join().unwrap(), ok)
    }

    fn ranges_arrive_exactly(kind: Kind) {
        let dir = temp_dir(&format!("bulk-ranges-{kind:?}"));
        let data = content(LEN);
        let (_path, file) = file_with(&dir, &data);
        let n = LEN as u64;
        for (off, len) in [
            (0, 1000),                // start, small
            (0, 600_000),             // start, zero-copy
            (1_000_003, 2_500_000),   // middle
            (n - 700_000, 700_000),   // end, zero-copy
            (n - 10, 10),             // end, small
            (500, 0),                 // empty
            (n, 0),                   // empty at the end
            (0, n),                   // whole
            (4096, OUT_FLUSH as u64), // exactly one output chunk
        ] {
            let (got, ok) = send(kind, &dir, &file, off, len);
            assert!(ok, "{kind:?} {off}+{len}");
            let want = &data[off as usize..(off + len) as usize];
            assert_eq!(got.len(), want.len() + 6, "{kind:?} {off}+{len}");
            assert_eq!(&got[..3], b"HDR");
            assert!(got[3..got.len() - 3] == *want, "{kind:?} {off}+{len}");
            assert_eq!(&got[got.len() - 3..], b"END");
        }
        // Past the end: refused before anything, the header included, is written.
        for (off, len) in [(n - 5, 6), (n + 1, 0), (u64::MAX, 2), (0, n + 1)] {
            let (mut s, reader) = pair(kind, &dir);
            let mut out = b"HDR".to_vec();
            let e = send_range(&mut s, &mut out, &file, off, len).unwrap_err();
            assert!(
                matches!(&e, SendError::Io(io) if io.kind() == io::ErrorKind::InvalidInput),
                "{kind:?} {off}+{len}: {e}"
            );
            assert_eq!(out, b"HDR");
            s.close_gracefully(Duration::from_millis(100));
            assert_eq!(reader.join().unwrap(), b"", "{kind:?} {off}+{len}");
        }
        // send_file is the whole range.
        let (mut s, reader) = pair(kind, &dir);
        let mut out = Vec::new();
        send_file(&mut s, &mut out, &file).unwrap();
        flush(&mut s, &mut out).unwrap();
        s.close_gracefully(Duration::from_millis(100));
        assert!(reader.join().unwrap() == data);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The file changes after it was opened: every range fails before its last byte, and the
    /// peer never gets the range whole.
    fn changed_file_never_completes_a_range(kind: Kind) {
        let dir = temp_dir(&format!("bulk-changed-{kind:?}"));
        let data = content(LEN);
        let (path, file) = file_with(&dir, &data);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        io::Write::write_all(&mut f, b"appended").unwrap();
        drop(f);
        let n = LEN as u64;
        for (off, len) in [(1_000_003, 2_500_000), (0, 100), (n - 10, 10), (7, 0)] {
            let (got, ok) = send(kind, &dir, &file, off, len);
            assert!(!ok, "{kind:?} {off}+{len}");
            assert!(
                got.len() < 3 + len as usize || len == 0,
                "{kind:?} {off}+{len}: {} bytes arrived",
                got.len()
            );
            let sent = &got[3.min(got.len())..];
            assert!(*sent == data[off as usize..off as usize + sent.len()]);
        }
        // Truncated under the mapping: the zero-copy path sees EFAULT, never SIGBUS.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(1000)
            .unwrap();
        let (got, ok) = send(kind, &dir, &file, 0, n);
        assert!(
            !ok && got.len() < LEN,
            "{kind:?}: {} bytes arrived",
            got.len()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ranges_arrive_exactly_over_plain_tcp() {
        ranges_arrive_exactly(Kind::Tcp);
    }

    #[test]
    fn ranges_arrive_exactly_over_unix() {
        ranges_arrive_exactly(Kind::Unix);
    }

    #[test]
    fn ranges_arrive_exactly_over_tls() {
        ranges_arrive_exactly(Kind::Tls);
    }

    #[test]
    fn a_changed_file_never_completes_a_range_over_plain_tcp() {
        changed_file_never_completes_a_range(Kind::Tcp);
    }

    #[test]
    fn a_changed_file_never_completes_a_range_over_unix() {
        changed_file_never_completes_a_range(Kind::Unix);
    }

    #[test]
    fn a_changed_file_never_completes_a_range_over_tls() {
        changed_file_never_completes_a_range(Kind::Tls);
    }

    #[test]
    fn an_empty_file_is_its_only_range() {
        let dir = temp_dir("bulk-empty");
        let (_path, file) = file_with(&dir, b"");
        let (got, ok) = send(Kind::Unix, &dir, &file, 0, 0);
        assert!(ok);
        assert_eq!(got, b"HDREND");
        let (got, ok) = send(Kind::Unix, &dir, &file, 0, 1);
        assert!(!ok);
        assert_eq!(got, b"HDR");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
