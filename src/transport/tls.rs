//! TLS 1.3 for every ferry protocol: server and client configurations built once, and a bounded
//! handshake per TCP connection that yields a [`Stream`].
//!
//! ```text
//!   TcpStream ──accept/connect──▶ handshaking ──ok──▶ Stream::TlsServer / Stream::TlsClient
//!                                     │
//!                                     └─ error, alert, EOF or deadline ──▶ TransportError
//! ```
//!
//! Policy (JTP spec 3.9): TLS 1.3 only, with the `ring` provider; a TLS 1.2 ClientHello gets alert
//! protocol_version. The server offers its ALPN list; a client offering no ALPN is accepted, one
//! offering only other protocols gets alert no_application_protocol. No client authentication.
//! The client trusts the certificates of a PEM file or, without one, the Mozilla root set; it
//! offers its ALPN list and accepts a server that selects none.
//!
//! The handshake is driven here rather than by `StreamOwned` so that it has one overall deadline
//! on top of the socket's per-read timeouts: a peer trickling one byte per timeout cannot hold a
//! worker forever. The established connection is driven here too ([`TlsStream`]), for the write
//! side: `StreamOwned::write` swallows a write timeout and then blocks in a read, so a peer that
//! stops reading would hold a connection forever. Out of scope: session resumption tuning, client
//! certificates, TLS 1.2.
//!
//! ```text
//!   write(buf) ──► queued records? ──► write_tls (SO_SNDTIMEO) ──► plaintext into records ──►
//!                        │                  │ timeout / error                  write_tls
//!                        │                  ▼
//!                        └──────────► failed: this and every later write, flush and
//!                                     close_notify fail at once (one deadline, not one per call)
//!   read(buf)  ──► plaintext buffered? ──yes──► copy out
//!                        │ no
//!                        ▼
//!                  read_tls (SO_RCVTIMEO) ──► process_new_packets ──► again
//!                  (FIN without close_notify reads as end of stream, as `Stream` documents)
//! ```

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::ops::DerefMut;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::crypto::CryptoProvider;
use rustls::{
    ClientConfig, ClientConnection, ConnectionCommon, RootCertStore, ServerConfig,
    ServerConnection, SideData,
};
use rustls_pki_types::ServerName;

use super::certs;
use super::{Stream, TransportError};

fn provider() -> Arc<CryptoProvider> {
    // AES-128-GCM first: on hardware with AES-NI it moves bulk data about a third faster than
    // AES-256-GCM, and TLS 1.3 peers honour the client's order. The others stay for peers
    // that lack it.
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites.sort_by_key(|s| match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
        _ => 2,
    });
    Arc::new(p)
}

const TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// Server-side TLS: a configuration built once, then [`TlsServer::accept`] per socket.
#[derive(Clone)]
pub struct TlsServer {
    config: Arc<ServerConfig>,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer")
            .field("alpn", &self.config.alpn_protocols)
            .finish()
    }
}

impl TlsServer {
    /// TLS 1.3 only; offers `alpn` (e.g. `[b"jtp/1"]`). `cert` holds the chain, leaf first; `key`
    /// the private key (PKCS#8, PKCS#1 or SEC1). Missing or unreadable files are errors.
    pub fn from_pem_files(
        cert: &Path,
        key: &Path,
        alpn: &[&[u8]],
    ) -> Result<TlsServer, TransportError> {
        let chain = certs::load_certs(cert)?;
        let key = certs::load_key(key)?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(TLS13_ONLY)
            .map_err(TransportError::Tls)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| TransportError::Cert(format!("certificate or key not usable: {e}")))?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(TlsServer {
            config: Arc::new(config),
        })
    }

    /// Loads `<state_dir>/tls/{cert,key}.pem`, generating them first if both are missing (one
    /// without the other is an error and nothing is written). Returns the server, the SHA-256
    /// fingerprint of the certificate ("AB:CD:...") and whether the pair was generated now.
    pub fn self_signed(
        state_dir: &Path,
        alpn: &[&[u8]],
    ) -> Result<(TlsServer, String, bool), TransportError> {
        let (cert, key, generated) = certs::ensure_self_signed(state_dir)?;
        let server = TlsServer::from_pem_files(&cert, &key, alpn)?;
        let leaf = certs::load_certs(&cert)?;
        Ok((server, certs::fingerprint(&leaf[0]), generated))
    }

    /// Runs the server handshake on an accepted socket. Each read and write is bounded by the
    /// socket's own timeouts (set them before calling) and the whole handshake by `timeout`.
    /// On failure the alert rustls chose (e.g. protocol_version, no_application_protocol) is
    /// sent before the error is returned.
    pub fn accept(&self, tcp: TcpStream, timeout: Duration) -> Result<Stream, TransportError> {
        let mut conn = ServerConnection::new(self.config.clone()).map_err(TransportError::Tls)?;
        let mut tcp = tcp;
        handshake(&mut conn, &mut tcp, timeout)?;
        Ok(Stream::TlsServer(Box::new(TlsStream::new(conn, tcp))))
    }
}

/// Client-side TLS: a configuration built once, then [`TlsClient::connect`] per socket.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("alpn", &self.config.alpn_protocols)
            .finish()
    }
}

impl TlsClient {
    /// Trust anchors: every certificate in `cert`, or webpki-roots' Mozilla set without it.
    /// Offers `alpn` (may be empty) and accepts a server that selects none. TLS 1.3 only.
    pub fn new(cert: Option<&Path>, alpn: &[&[u8]]) -> Result<TlsClient, TransportError> {
        let mut roots = RootCertStore::empty();
        match cert {
            Some(path) => {
                for der in certs::load_certs(path)? {
                    roots.add(der).map_err(|e| TransportError::Pem {
                        path: path.to_path_buf(),
                        detail: format!("not usable as a trust anchor: {e}"),
                    })?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(TLS13_ONLY)
            .map_err(TransportError::Tls)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(TlsClient {
            config: Arc::new(config),
        })
    }

    /// Runs the client handshake. `server_name` is a DNS name or an IP literal (`[::1]` brackets
    /// allowed); it is both sent as SNI (names only) and verified against the certificate, an IP
    /// against its IP SANs. Bounded like [`TlsServer::accept`].
    pub fn connect(
        &self,
        tcp: TcpStream,
        server_name: &str,
        timeout: Duration,
    ) -> Result<Stream, TransportError> {
        let bare = server_name
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .unwrap_or(server_name);
        let name = ServerName::try_from(bare.to_string())
            .map_err(|_| TransportError::ServerName(server_name.to_string()))?;
        let mut conn =
            ClientConnection::new(self.config.clone(), name).map_err(TransportError::Tls)?;
        let mut tcp = tcp;
        handshake(&mut conn, &mut tcp, timeout)?;
        Ok(Stream::TlsClient(Box::new(TlsStream::new(conn, tcp))))
    }
}

/// Drives a handshake to completion (including flushing our last flight) within `timeout`.
/// The socket's own timeouts are tightened to the remaining time for each call and restored after.
fn handshake<D: SideData>(
    conn: &mut ConnectionCommon<D>,
    tcp: &mut TcpStream,
    timeout: Duration,
) -> Result<(), TransportError> {
    let peer = tcp
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "unknown peer".into());
    let saved = (tcp.read_timeout(), tcp.write_timeout());
    let result = drive(conn, tcp, timeout, &peer);
    if let (Ok(r), Ok(w)) = saved {
        // Best effort: if restoring fails the socket is broken and the next I/O says so.
        let _ = tcp.set_read_timeout(r);
        let _ = tcp.set_write_timeout(w);
    }
    result
}

fn drive<D: SideData>(
    conn: &mut ConnectionCommon<D>,
    tcp: &mut TcpStream,
    timeout: Duration,
    peer: &str,
) -> Result<(), TransportError> {
    let deadline = Instant::now() + timeout;
    let (base_read, base_write) = (
        tcp.read_timeout().ok().flatten(),
        tcp.write_timeout().ok().flatten(),
    );
    let io_err = |source: io::Error| -> TransportError {
        if matches!(
            source.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            TransportError::Timeout("tls handshake")
        } else {
            TransportError::Io {
                what: format!("tls: handshake with {peer}"),
                source,
            }
        }
    };
    while conn.is_handshaking() || conn.wants_write() {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(TransportError::Timeout("tls handshake"));
        }
        if conn.wants_write() {
            tcp.set_write_timeout(Some(shorter(base_write, remaining)))
                .map_err(io_err)?;
            conn.write_tls(tcp).map_err(io_err)?;
            continue;
        }
        tcp.set_read_timeout(Some(shorter(base_read, remaining)))
            .map_err(io_err)?;
        let n = match conn.read_tls(tcp) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(e)),
        };
        if n == 0 {
            return Err(io_err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed the connection",
            )));
        }
        if let Err(error) = conn.process_new_packets() {
            // rustls has queued the matching alert; send it so the peer learns why. A failure
            // here changes nothing for us: the handshake has already failed.
            tcp.set_write_timeout(Some(shorter(base_write, Duration::from_secs(1))))
                .ok();
            while conn.wants_write() {
                match conn.write_tls(tcp) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            let _ = tcp.flush();
            return Err(TransportError::Handshake {
                peer: peer.to_string(),
                error,
            });
        }
    }
    Ok(())
}

fn shorter(base: Option<Duration>, remaining: Duration) -> Duration {
    match base {
        Some(b) if b < remaining => b,
        _ => remaining,
    }
}

/// An established TLS connection over TCP (either side), driven by hand: every write(2) is one
/// `write_tls` bounded by the socket's write timeout, so a TLS write keeps exactly the deadline
/// of a plain one. Bulk writes go through rustls' own buffer (records of up to 16 KiB, as many
/// as its 64 KiB send limit holds per call) with no copy beyond the encryption itself.
pub struct TlsStream<C> {
    pub(super) conn: C,
    pub(super) sock: TcpStream,
    /// Set when a write failed (timed out: the peer is not reading; or the socket broke). The
    /// connection is then out of step; later writes fail at once instead of waiting again.
    write_failed: Option<io::ErrorKind>,
}

impl<C, S> TlsStream<C>
where
    C: DerefMut<Target = ConnectionCommon<S>>,
    S: SideData,
{
    pub(super) fn new(conn: C, sock: TcpStream) -> TlsStream<C> {
        TlsStream {
            conn,
            sock,
            write_failed: None,
        }
    }

    /// Writes every queued TLS record. Each `write_tls` is one write(2), bounded by SO_SNDTIMEO;
    /// a timeout is an error (`TimedOut`) and marks the stream failed.
    fn write_queued(&mut self) -> io::Result<()> {
        if let Some(kind) = self.write_failed {
            return Err(io::Error::new(kind, "tls: an earlier write failed"));
        }
        while self.conn.wants_write() {
            let started = Instant::now();
            match self.conn.write_tls(&mut self.sock) {
                Ok(0) => return Err(self.fail(io::ErrorKind::WriteZero.into())),
                // A blocking write returns short only when SO_SNDTIMEO expired mid-call (the
                // peer stopped reading): stop now rather than wait a second timeout in the
                // next call, as the plain path does (`driver::bulk`).
                Ok(_) if self.conn.wants_write() && self.timed_out_since(started) => {
                    return Err(self.fail(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "tls: write timed out (the peer is not reading)",
                    )));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(self.fail(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "tls: write timed out (the peer is not reading)",
                    )));
                }
                Err(e) => return Err(self.fail(e)),
            }
        }
        Ok(())
    }

    /// Whether a write that began at `started` ran for the socket's whole write timeout.
    fn timed_out_since(&self, started: Instant) -> bool {
        let took = started.elapsed();
        // Most writes return at once; only a slow one pays for the getsockopt.
        took >= Duration::from_millis(1)
            && self
                .sock
                .write_timeout()
                .ok()
                .flatten()
                .is_some_and(|t| took >= t)
    }

    fn fail(&mut self, e: io::Error) -> io::Error {
        self.write_failed = Some(e.kind());
        e
    }

    /// After `n` plaintext bytes were taken in: push their records out. Bytes taken are
    /// reported even when pushing fails (the failure is sticky and the next call reports it).
    fn push(&mut self, n: usize) -> io::Result<usize> {
        match self.write_queued() {
            Ok(()) => Ok(n),
            Err(e) if n == 0 => Err(e),
            Err(_) => Ok(n),
        }
    }

    /// Queues close_notify and writes it, bounded like any write; errors are ignored (the
    /// connection is ending).
    pub(super) fn send_close_notify(&mut self) {
        if self.write_failed.is_none() {
            self.conn.send_close_notify();
            let _ = self.write_queued();
        }
    }

    /// Whether the peer sent close_notify (a bare FIN reads as end of stream too, see the
    /// `transport` docs; this tells them apart).
    #[cfg(test)]
    pub(super) fn received_close_notify(&mut self) -> bool {
        matches!(self.conn.reader().read(&mut [0u8; 1]), Ok(0))
    }
}

impl<C, S> Read for TlsStream<C>
where
    C: DerefMut<Target = ConnectionCommon<S>>,
    S: SideData,
{
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                // TCP FIN without close_notify: an ordinary end of stream here (module docs).
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            // Records rustls queued while reading (a key update reply) go out before we wait.
            if self.write_failed.is_none() {
                self.write_queued()?;
            }
            match self.conn.read_tls(&mut self.sock) {
                // Ok(0) is a FIN: rustls records it and its reader reports the end above.
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if let Err(e) = self.conn.process_new_packets() {
                // rustls queued the matching alert: send it, best effort.
                let _ = self.write_queued();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }
}

impl<C, S> Write for TlsStream<C>
where
    C: DerefMut<Target = ConnectionCommon<S>>,
    S: SideData,
{
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // Records left over make room first (normally there are none: every call pushes its own).
        self.write_queued()?;
        let n = self.conn.writer().write(buf)?;
        self.push(n)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        if bufs.iter().all(|b| b.is_empty()) {
            return Ok(0);
        }
        self.write_queued()?;
        let n = self.conn.writer().write_vectored(bufs)?;
        self.push(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.conn.writer().flush()?;
        self.write_queued()
    }
}
