//! Plain-data configuration shared by the servers: the numeric bounds in [`Limits`], where TLS
//! material comes from ([`TlsSource`]) and JTP's settings ([`JtpConfig`]). Listener set-up
//! (address, TLS, timeouts, connection budget) is [`ListenerConfig`], built from these. The
//! command line (`bin/cli/`) fills them in one place; the library never reads arguments or the
//! environment itself.
//!
//! [`ListenerConfig`]: crate::server::ListenerConfig

use std::path::PathBuf;
use std::time::Duration;

/// Bounds on what a peer can make ferry spend. Every length or count read from the wire is
/// compared with one of these before it is acted on.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Concurrent connections per listener (each listener of `ferry serve` has its own).
    /// Default 1024. A connection beyond it gets the protocol's busy reply (or, on TLS, a close
    /// before the handshake) at once. Becomes [`ListenerConfig::max_connections`].
    ///
    /// [`ListenerConfig::max_connections`]: crate::server::ListenerConfig::max_connections
    pub max_connections: usize,
    /// No read or write progress for this long ends a connection, TLS writes included; also
    /// bounds the TLS handshake. Default 30 s. Becomes [`ListenerConfig::io_timeout`].
    ///
    /// [`ListenerConfig::io_timeout`]: crate::server::ListenerConfig::io_timeout
    pub io_timeout: Duration,
    /// Time allowed for a request body once its header arrived. Default 60 s.
    pub body_timeout: Duration,
    /// Silence allowed before the first request. Default 60 s.
    pub first_request_timeout: Duration,
    /// Idle time allowed between requests on a keep-alive connection. Default 30 s.
    pub keep_alive_timeout: Duration,
    /// Unread pipelined input kept per connection before ferry stops reading. Default 64 KiB.
    pub max_buffered_input: usize,
    /// JTP BATCH: most ids a client may say it holds. Default 1,000,000.
    pub max_have: u32,
    /// How long shutdown waits for running transfers. Default 10 s.
    pub shutdown_grace: Duration,
    /// How long a closing connection reads and discards input so the close is not an RST. 1 s.
    pub close_linger: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            io_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
            first_request_timeout: Duration::from_secs(60),
            keep_alive_timeout: Duration::from_secs(30),
            max_buffered_input: 64 * 1024,
            max_have: 1_000_000,
            shutdown_grace: Duration::from_secs(10),
            close_linger: Duration::from_secs(1),
        }
    }
}

/// Where TLS material comes from.
#[derive(Clone, Debug, Default)]
pub enum TlsSource {
    /// Plain TCP.
    #[default]
    Off,
    /// `.ferry/tls/{cert,key}.pem` in the served folder, generated on first start.
    SelfSigned,
    /// PEM files named by the user; never written to.
    Files { cert: PathBuf, key: PathBuf },
}

/// JTP server settings (the reference server's flags, `ferry jtp serve --help`).
#[derive(Clone, Debug)]
pub struct JtpConfig {
    /// Listen address. Default `127.0.0.1:8443`.
    pub bind: String,
    pub tls: TlsSource,
    /// Serve only names containing this, ASCII case-insensitive.
    pub only: Option<String>,
    /// Send a compressed form only when compressed/original is below this. Default 0.95; 0 = never.
    pub compression_threshold: f64,
    /// Rate limit: accepted connections plus further keep-alive requests per IP per window.
    pub rate_limit: Option<u32>,
    /// Sliding window of the rate limit. Default 60 s.
    pub rate_limit_window: Duration,
    /// Set when the catalog follows the folder (live, or rescans at this interval); enables
    /// WATCH. None = the folder is not followed.
    pub watch_interval: Option<Duration>,
    pub verbose: bool,
}

impl Default for JtpConfig {
    fn default() -> Self {
        JtpConfig {
            bind: "127.0.0.1:8443".into(),
            tls: TlsSource::SelfSigned,
            only: None,
            compression_threshold: 0.95,
            rate_limit: None,
            rate_limit_window: Duration::from_secs(60),
            watch_interval: None,
            verbose: false,
        }
    }
}
