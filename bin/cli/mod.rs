//! The command line's shared pieces: exit codes and the [`Failure`] that carries one, and the
//! server set-up every `serve` command repeats (catalog, TLS material, listening lines, the
//! rescanner). One module per protocol holds that protocol's commands.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry::catalog::{CatalogHandle, CatalogOptions};
use ferry::config::{Limits, TlsSource};
use ferry::server::{self, Listener, ListenerConfig, ServerBuilder, Shutdown};
use ferry::transport::TlsServer;

pub(crate) mod cjp2p;
pub(crate) mod folder;
pub(crate) mod jtp;
pub(crate) mod serve;
pub(crate) mod sync;
pub(crate) mod tej;

pub(crate) const EXIT_OK: u8 = 0;

pub(crate) const EXIT_PARTIAL: u8 = 1;

pub(crate) const EXIT_LOCAL: u8 = 2;

pub(crate) const EXIT_NETWORK: u8 = 3;

pub(crate) const EXIT_PROTOCOL: u8 = 4;

pub(crate) const EXIT_INTERRUPTED: u8 = 130;

/// A failure with its exit code.
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

pub(crate) fn local(message: impl std::fmt::Display) -> Failure {
    Failure {
        code: EXIT_LOCAL,
        message: message.to_string(),
    }
}

pub(crate) fn either<T>(a: Option<T>, b: Option<T>) -> Option<T> {
    a.or(b)
}

pub(crate) fn tls_source(
    plain: bool,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<TlsSource, Failure> {
    if plain {
        return Ok(TlsSource::Off);
    }
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(TlsSource::Files { cert, key }),
        (None, None) => Ok(TlsSource::SelfSigned),
        _ => Err(local("--cert and --key go together")),
    }
}

pub(crate) fn open_catalog(dir: &Path, verbose: bool) -> Result<Arc<CatalogHandle>, Failure> {
    let cat = CatalogHandle::open(dir, CatalogOptions { verbose }).map_err(local)?;
    let r = cat.last_report();
    eprintln!(
        "ferry: catalog {}: {} files ({} hashed, {} from the index) in {:.2} s",
        dir.display(),
        r.files,
        r.hashed,
        r.reused,
        r.elapsed.as_secs_f64()
    );
    Ok(cat)
}

pub(crate) fn load_tls(
    src: &TlsSource,
    cat: &CatalogHandle,
    alpn: &[u8],
) -> Result<Option<TlsServer>, Failure> {
    match src {
        TlsSource::Off => Ok(None),
        TlsSource::Files { cert, key } => Ok(Some(
            TlsServer::from_pem_files(cert, key, &[alpn]).map_err(local)?,
        )),
        TlsSource::SelfSigned => {
            let (tls, fp, generated) =
                TlsServer::self_signed(&cat.state_dir(), &[alpn]).map_err(local)?;
            eprintln!(
                "ferry: tls certificate {} sha256 {fp}{}",
                cat.state_dir().join("tls/cert.pem").display(),
                if generated { " (generated)" } else { "" }
            );
            Ok(Some(tls))
        }
    }
}

/// Rescans on the interval (if any) and on SIGHUP, until shutdown.
pub(crate) fn spawn_rescanner(
    cat: Arc<CatalogHandle>,
    every: Option<Duration>,
    shutdown: Shutdown,
    verbose: bool,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut last = std::time::Instant::now();
        while !shutdown.is_triggered() {
            std::thread::sleep(Duration::from_millis(100));
            let due = every.is_some_and(|e| last.elapsed() >= e);
            if due || server::take_rescan_request() {
                last = std::time::Instant::now();
                match cat.rescan() {
                    Ok(r) if verbose && r.changed => eprintln!(
                        "ferry: rescan: {} files, {} hashed, {} reused",
                        r.files, r.hashed, r.reused
                    ),
                    Ok(_) => {}
                    Err(e) => eprintln!("ferry: rescan: {e}"),
                }
            }
        }
    })
}

pub(crate) fn print_listening(proto: &str, addr: &str, json: bool) {
    let mut out = std::io::stdout().lock();
    if json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::json!({"event": "listening", "proto": proto, "addr": addr})
        );
    } else {
        let _ = writeln!(out, "listening {proto} {addr}");
    }
    let _ = out.flush();
}

/// Runs listeners until Ctrl-C/SIGTERM.
pub(crate) fn run_servers(
    builder: ServerBuilder,
    shutdown: Shutdown,
    cat: Arc<CatalogHandle>,
    watch: Option<Duration>,
    verbose: bool,
    json: bool,
) -> Result<u8, Failure> {
    run_servers_with(builder, shutdown, cat, watch, verbose, json, &[])
}

/// [`run_servers`] plus listening lines for servers started outside the builder (UDP).
pub(crate) fn run_servers_with(
    builder: ServerBuilder,
    shutdown: Shutdown,
    cat: Arc<CatalogHandle>,
    watch: Option<Duration>,
    verbose: bool,
    json: bool,
    extra: &[(String, String)],
) -> Result<u8, Failure> {
    let handle = builder.start().map_err(local)?;
    for (proto, addr) in handle.addrs().iter().chain(extra) {
        print_listening(proto, addr, json);
    }
    let rescanner = spawn_rescanner(cat, watch, shutdown.clone(), verbose);
    handle.wait();
    let _ = rescanner.join();
    Ok(EXIT_OK)
}

/// The TCP listener of a `serve` command: TLS when given, the io timeout on every socket, and
/// `max_connections` for this listener alone.
pub(crate) fn tcp_listener(
    addr: &str,
    tls: Option<TlsServer>,
    limits: &Limits,
    verbose: bool,
) -> ListenerConfig {
    ListenerConfig::tcp(addr)
        .tls_opt(tls)
        .io_timeout(limits.io_timeout)
        .max_connections(limits.max_connections)
        .close_linger(limits.close_linger)
        .verbose(verbose)
}

/// Binds a listener; a failure names the protocol and address (exit 2).
pub(crate) fn bind(proto: &str, addr: &str, cfg: ListenerConfig) -> Result<Listener, Failure> {
    cfg.bind()
        .map_err(|e| local(format!("{proto}: bind {addr}: {e}")))
}

pub(crate) fn limits(max_connections: usize, io_timeout: u64) -> Limits {
    Limits {
        max_connections,
        io_timeout: Duration::from_secs(io_timeout.max(1)),
        ..Limits::default()
    }
}
