//! Connection set-up, on the worker that will serve the connection (never on the accept
//! thread, so a slow handshake delays no one else):
//!
//! ```text
//!  accepted ──► timeouts, TCP_NODELAY ──► Service::admit ──Close──► closed, no byte
//!                                               │ Admit / Reply
//!                                               ▼
//!               TLS listener? ──► handshake (handshake timeout) ──fail──► closed
//!                                               │
//!               preamble? ──► read exactly its bytes (handshake timeout) ──wrong/late──► closed, no byte
//!                             write its reply   │
//!                                               ▼
//!               Reply(bytes)? ──► send them, close in order
//!                                               │ Admit
//!                                               ▼
//!                                     Service::serve(stream, peer)
//! ```

use std::fmt;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use super::listener::{ListenerConfig, RawConn};
use super::{Admission, ConnCtx, Service};
use crate::transport::{Peer, Stream, TransportError};

/// Why a connection was closed during set-up. Logged with `verbose`, never sent.
#[derive(Debug)]
pub enum SetupError {
    /// Setting a socket option or writing the preamble reply failed.
    Io(io::Error),
    /// The TLS handshake failed or ran out of time.
    Handshake(TransportError),
    /// The client did not send the preamble.
    Preamble(PreambleError),
}

/// How a preamble went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreambleError {
    /// A byte differed from the expected name.
    Mismatch,
    /// The connection ended before the whole name arrived.
    Eof,
    /// The name did not arrive within the handshake timeout.
    Timeout,
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetupError::Io(e) => write!(f, "set-up: {e}"),
            SetupError::Handshake(e) => write!(f, "{e}"),
            SetupError::Preamble(PreambleError::Mismatch) => write!(f, "preamble: wrong name"),
            SetupError::Preamble(PreambleError::Eof) => {
                write!(f, "preamble: closed before the name was complete")
            }
            SetupError::Preamble(PreambleError::Timeout) => write!(f, "preamble: timed out"),
        }
    }
}

impl std::error::Error for SetupError {}

impl From<io::Error> for SetupError {
    fn from(e: io::Error) -> Self {
        SetupError::Io(e)
    }
}

/// Sets up an accepted connection. `Ok(None)`: the connection was refused and is closed.
pub(super) fn set_up(
    conn: RawConn,
    peer: &Peer,
    cfg: &ListenerConfig,
    svc: &dyn Service,
    ctx: &ConnCtx,
) -> Result<Option<Stream>, SetupError> {
    let mut stream = match conn {
        RawConn::Tcp(t) => {
            t.set_read_timeout(Some(cfg.io_timeout))?;
            t.set_write_timeout(Some(cfg.io_timeout))?;
            t.set_nodelay(cfg.nodelay)?;
            Stream::Tcp(t)
        }
        RawConn::Unix(u) => {
            u.set_read_timeout(Some(cfg.io_timeout))?;
            u.set_write_timeout(Some(cfg.io_timeout))?;
            Stream::Unix(u)
        }
    };
    let refusal = match svc.admit(peer) {
        Admission::Admit => None,
        Admission::Close => return Ok(None),
        Admission::Reply(bytes) => Some(bytes),
    };
    if ctx.is_shutting_down() {
        return Ok(None);
    }
    if let Some(tls) = &cfg.tls {
        let Stream::Tcp(tcp) = stream else {
            // `ListenerConfig::bind` refuses TLS on anything but TCP.
            return Ok(None);
        };
        stream = tls
            .accept(tcp, cfg.setup_timeout())
            .map_err(SetupError::Handshake)?;
    }
    if let Some(p) = &cfg.preamble {
        read_preamble(&mut stream, &p.expect, cfg.setup_timeout()).map_err(SetupError::Preamble)?;
        stream.set_read_timeout(Some(cfg.io_timeout))?;
        stream.write_all(&p.reply)?;
        stream.flush()?;
    }
    if let Some(bytes) = refusal {
        stream.write_all(&bytes)?;
        stream.close_gracefully(cfg.close_linger);
        return Ok(None);
    }
    Ok(Some(stream))
}

/// Reads exactly `expect.len()` bytes (never more: what follows belongs to the service) within
/// `timeout`, stopping at the first byte that differs.
fn read_preamble(s: &mut Stream, expect: &[u8], timeout: Duration) -> Result<(), PreambleError> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < expect.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            return Err(PreambleError::Timeout);
        }
        let want = (expect.len() - got).min(buf.len());
        match s.read(&mut buf[..want]) {
            Ok(0) => return Err(PreambleError::Eof),
            Ok(n) => {
                if buf[..n] != expect[got..got + n] {
                    return Err(PreambleError::Mismatch);
                }
                got += n;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(PreambleError::Timeout)
            }
            // A reset or a TLS alert: the name never came.
            Err(_) => return Err(PreambleError::Eof),
        }
    }
    Ok(())
}
