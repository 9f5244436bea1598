//! The command line's shared pieces: exit codes and the [`Failure`] that carries one, and the
//! server set-up every `serve` command repeats (the descriptor limit and the default
//! `--max-connections` derived from it, the catalog and how it follows the folder, TLS
//! material, listening lines, SIGHUP rescans). One module per protocol holds that protocol's
//! commands.

use std::borrow::Cow;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry::catalog::{CatalogHandle, CatalogOptions, FollowOptions, WatcherGuard};
use ferry::config::{Limits, TlsSource};
use ferry::server::{self, Listener, ListenerConfig, ServerBuilder, Shutdown};
use ferry::transport::TlsServer;

/// `println!` for the command's output on stdout, except that a reader gone away (`ferry tej
/// list | head -1`) ends the command quietly with status 141, as death by SIGPIPE would,
/// instead of a panic: Rust ignores SIGPIPE, and `println!` panics on EPIPE. (SIGPIPE is not
/// restored instead: servers write to sockets with sendfile(2), which would then kill them.)
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_out(format_args!($($arg)*))
    };
}

pub(crate) mod cjp2p;
pub(crate) mod fastdp;
pub(crate) mod filestorage;
pub(crate) mod folder;
pub(crate) mod jtp;
pub(crate) mod progress;
pub(crate) mod serve;
pub(crate) mod sync;
pub(crate) mod tej;

pub(crate) const EXIT_OK: u8 = 0;

/// What a process killed by SIGPIPE reports to its shell (128 + 13).
const EXIT_BROKEN_PIPE: i32 = 141;

/// One line of output on stdout (see `out!`).
pub(crate) fn write_out(args: std::fmt::Arguments<'_>) {
    let mut o = std::io::stdout().lock();
    let r = o.write_fmt(args).and_then(|()| o.write_all(b"\n"));
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            std::process::exit(EXIT_BROKEN_PIPE)
        }
        // Any other failure to write the output is the command's failure to do its job.
        Err(e) => {
            eprintln!("ferry: stdout: {e}");
            std::process::exit(i32::from(EXIT_LOCAL))
        }
        Ok(()) => {}
    }
}

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

/// How a client command takes Ctrl-C (SIGINT, SIGTERM).
pub(crate) enum OnInterrupt {
    /// Nothing to clean up (a listing, a send whose partial frame the server throws away):
    /// say so and exit 130 at once.
    Exit(&'static str),
    /// As `Exit`, after removing this process's streaming temporaries in the folder (a
    /// preallocated file as large as the one being fetched would stay until the next run).
    ExitRemovingTemporaries(&'static str, PathBuf),
    /// Set this flag: the command stops within a second, removes its temporaries and exits 130
    /// (or, for `--watch`, 0). A second Ctrl-C exits at once; the temporaries it leaves are
    /// removed by the next run into the same folder.
    Stop(Arc<AtomicBool>),
}

/// Installs the Ctrl-C behaviour of a client command (once per process).
pub(crate) fn on_interrupt(how: OnInterrupt) {
    let _ = match how {
        OnInterrupt::Exit(what) => ctrlc::set_handler(move || interrupted(what)),
        OnInterrupt::ExitRemovingTemporaries(what, folder) => ctrlc::set_handler(move || {
            if let Err(e) = ferry::ingest::remove_own_temporaries(&folder) {
                eprintln!(
                    "ferry: {what}: removing temporaries in {}: {e}",
                    folder.display()
                );
            }
            interrupted(what);
        }),
        OnInterrupt::Stop(flag) => ctrlc::set_handler(move || {
            if flag.swap(true, Ordering::SeqCst) {
                std::process::exit(EXIT_INTERRUPTED as i32);
            }
        }),
    };
}

/// Says the command was interrupted and exits 130.
fn interrupted(what: &str) -> ! {
    use std::io::IsTerminal;
    // A progress line may be on the terminal: start on a clean line.
    let clear = if std::io::stderr().is_terminal() {
        "\r\x1b[K"
    } else {
        ""
    };
    eprintln!("{clear}ferry: {what}: interrupted");
    std::process::exit(EXIT_INTERRUPTED as i32);
}

/// Text from a peer (a name, a message) made safe to show: see [`ferry::names::printable`].
pub(crate) fn shown(text: &str) -> Cow<'_, str> {
    ferry::names::printable(text)
}

/// Descriptors a server keeps whatever its connections do: the standard streams, listeners,
/// wake pipes, the catalog's root and `.ferry`, the index journal, inotify and the follower's
/// socket pair, TLS files at start, CJP2P's socket and its downloads' parts, and slack. One
/// more per hashing thread is added at run time.
const RESERVED_FDS: u64 = 64;

/// Descriptors one connection may hold at once: its socket, the shutdown sweeper's duplicate of
/// it, and the files it is sending (a JTP response keeps up to
/// [`MAX_OPEN_AHEAD`](ferry::driver::jtp::server::MAX_OPEN_AHEAD) open; TEJ holds one file or
/// one upload temporary).
const FDS_PER_CONNECTION: u64 = 2 + ferry::driver::jtp::server::MAX_OPEN_AHEAD as u64;

/// Bounds of the derived default of `--max-connections` (per listener).
const MIN_DEFAULT_CONNECTIONS: u64 = 16;
const MAX_DEFAULT_CONNECTIONS: u64 = 1024;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, once per process; returns the soft limit
/// now in force. (The catalog keeps no descriptor per file, but a server's connections each
/// hold a few, and the usual soft limit of 1,024 is far below what the hard limit allows.)
pub(crate) fn raise_fd_limit() -> u64 {
    static SOFT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SOFT.get_or_init(|| {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit, which `lim` is.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            // SAFETY: setrlimit reads one rlimit, which `raised` is.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        // Infinity or beyond u64 cannot happen for RLIMIT_NOFILE on Linux; be safe anyway.
        #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
        u64::try_from(lim.rlim_cur).unwrap_or(u64::MAX)
    })
}

/// The default `--max-connections` of a command with `listeners` TCP listeners, each of which
/// gets this budget: what the descriptors allow once the soft limit is raised to the hard one,
///
/// ```text
/// (RLIMIT_NOFILE - RESERVED_FDS - hashing threads) / (FDS_PER_CONNECTION x listeners)
/// ```
///
/// clamped to 16..=1024 (1,024 was the fixed default before). With a hard limit of 1,024 and
/// two listeners that is 47 per listener; from a limit of about 20,600 on, 1,024.
pub(crate) fn default_max_connections(listeners: u64) -> usize {
    let soft = raise_fd_limit();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let per = FDS_PER_CONNECTION * listeners.max(1);
    let n = soft.saturating_sub(RESERVED_FDS + threads) / per;
    n.clamp(MIN_DEFAULT_CONNECTIONS, MAX_DEFAULT_CONNECTIONS) as usize
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

/// How a serving command's catalog follows its folder: live by inotify unless `--no-follow`,
/// plus a whole-folder rescan every `--watch-interval SECS` (alias `--watch SECS`; the polling
/// fallback for file systems whose changes inotify does not see). SIGHUP rescans in every
/// case.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Follow {
    pub(crate) live: bool,
    pub(crate) poll: Option<Duration>,
}

impl Follow {
    pub(crate) fn new(no_follow: bool, watch_secs: Option<u64>) -> Follow {
        Follow {
            live: !no_follow,
            poll: watch_secs.map(|s| Duration::from_secs(s.max(1))),
        }
    }

    /// Whether the catalog follows the folder at all.
    pub(crate) fn is_following(&self) -> bool {
        self.live || self.poll.is_some()
    }

    /// `JtpConfig::watch_interval`: JTP WATCH is available whenever the folder is followed.
    pub(crate) fn jtp_watch(&self) -> Option<Duration> {
        self.is_following()
            .then(|| self.poll.unwrap_or(Duration::from_secs(1)))
    }
}

/// Whether a serving command's start-up report (catalog, TLS certificate) is printed as JSON
/// objects (`--json`); see [`report_as_json`].
static JSON_REPORT: AtomicBool = AtomicBool::new(false);

/// `--json` of a serving command: its start-up report lines go to stderr as JSON objects,
/// `{"event":"catalog",...}` and `{"event":"tls",...}`, while stdout keeps only the
/// `{"event":"listening",...}` objects that scripts and tests wait for.
pub(crate) fn report_as_json(on: bool) {
    JSON_REPORT.store(on, Ordering::Relaxed);
}

fn is_json_report() -> bool {
    JSON_REPORT.load(Ordering::Relaxed)
}

/// Opens the served folder's catalog and starts following it (the watch is in place before
/// the first scan, so nothing that arrives meanwhile is missed). Every serving command comes
/// here first, so this is also where the descriptor limit is raised ([`raise_fd_limit`]).
pub(crate) fn open_catalog(
    dir: &Path,
    verbose: bool,
    follow: Follow,
) -> Result<(Arc<CatalogHandle>, Option<WatcherGuard>), Failure> {
    raise_fd_limit();
    let opts = CatalogOptions { verbose };
    let (cat, watcher) = if follow.is_following() {
        let fo = FollowOptions {
            inotify: follow.live,
            poll: follow.poll,
        };
        let (cat, g) = CatalogHandle::open_following(dir, opts, fo).map_err(local)?;
        (cat, Some(g))
    } else {
        (CatalogHandle::open(dir, opts).map_err(local)?, None)
    };
    let r = cat.last_report();
    let follow = match &watcher {
        Some(g) if g.is_live() => "live",
        Some(_) => "rescan",
        None => "off",
    };
    if is_json_report() {
        eprintln!(
            "{}",
            serde_json::json!({
                "event": "catalog",
                "dir": dir.display().to_string(),
                "files": r.files,
                "hashed": r.hashed,
                "reused": r.reused,
                "seconds": r.elapsed.as_secs_f64(),
                "follow": follow,
            })
        );
    } else {
        eprintln!(
            "ferry: catalog {}: {} files ({} hashed, {} from the index) in {:.2} s{}",
            dir.display(),
            r.files,
            r.hashed,
            r.reused,
            r.elapsed.as_secs_f64(),
            match follow {
                "live" => "; following it live",
                "rescan" => "; rescanning it periodically",
                _ => "",
            }
        );
    }
    Ok((cat, watcher))
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
                TlsServer::self_signed_in(cat.state(), &[alpn]).map_err(local)?;
            let cert = cat.state_dir().join("tls/cert.pem");
            if is_json_report() {
                eprintln!(
                    "{}",
                    serde_json::json!({
                        "event": "tls",
                        "cert": cert.display().to_string(),
                        "sha256": fp,
                        "generated": generated,
                    })
                );
            } else {
                eprintln!(
                    "ferry: tls certificate {} sha256 {fp}{}",
                    cert.display(),
                    if generated { " (generated)" } else { "" }
                );
            }
            Ok(Some(tls))
        }
    }
}

/// Rescans on SIGHUP until shutdown, then stops the folder's follower (`watcher`).
pub(crate) fn spawn_rescanner(
    cat: Arc<CatalogHandle>,
    watcher: Option<WatcherGuard>,
    shutdown: Shutdown,
    verbose: bool,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !shutdown.is_triggered() {
            std::thread::sleep(Duration::from_millis(100));
            if server::take_rescan_request() {
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
        drop(watcher);
    })
}

/// A server's ready line. Unlike `out!`, a stdout that is gone is ignored: a server started
/// with its output into a pipe that was closed keeps serving.
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
    watcher: Option<WatcherGuard>,
    verbose: bool,
    json: bool,
) -> Result<u8, Failure> {
    run_servers_with(builder, shutdown, cat, watcher, verbose, json, &[])
}

/// [`run_servers`] plus listening lines for servers started outside the builder (UDP).
pub(crate) fn run_servers_with(
    builder: ServerBuilder,
    shutdown: Shutdown,
    cat: Arc<CatalogHandle>,
    watcher: Option<WatcherGuard>,
    verbose: bool,
    json: bool,
    extra: &[(String, String)],
) -> Result<u8, Failure> {
    let handle = builder.start().map_err(local)?;
    for (proto, addr) in handle.addrs().iter().chain(extra) {
        print_listening(proto, addr, json);
    }
    let rescanner = spawn_rescanner(cat, watcher, shutdown.clone(), verbose);
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
