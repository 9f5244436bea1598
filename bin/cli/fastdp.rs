//! `ferry fastdp serve | send | get`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argh::FromArgs;

use ferry::driver::fastdp::client::{self as fdp, ClientError, ClientOptions, Progress};
use ferry::driver::fastdp::server::{FastdpConfig, FastdpService};
use ferry::driver::fastdp::v110_send::send_v110;
use ferry::proto::fastdp::frame::Compress;
use ferry::proto::fastdp::http::RequestRules;
use ferry::proto::fastdp::messages::V110Compress;
use ferry::server::{self, ServerBuilder, Shutdown};

use super::*;

#[derive(FromArgs)]
/// FastDP: parallel, resumable uploads and downloads over an HTTP Upgrade (and 1.1.0 senders).
#[argh(subcommand, name = "fastdp")]
pub(crate) struct FastdpArgs {
    #[argh(subcommand)]
    cmd: FastdpCmd,
}

#[derive(FromArgs)]
#[argh(subcommand)]
pub(crate) enum FastdpCmd {
    Serve(FastdpServeArgs),
    Send(FastdpSendArgs),
    Get(FastdpGetArgs),
}

#[derive(FromArgs)]
/// Receive FastDP uploads (1.2.0 and 1.1.0) into a folder and serve its catalog for pulls.
#[argh(subcommand, name = "serve")]
pub(crate) struct FastdpServeArgs {
    /// listen address (default 127.0.0.1:5423)
    #[argh(option, default = "String::from(\"127.0.0.1:5423\")")]
    bind: String,
    /// folder served and filled (default ./share, created if missing)
    #[argh(option)]
    root: Option<PathBuf>,
    /// largest file accepted, in bytes (default 64 GiB)
    #[argh(option, default = "64 << 30")]
    max_file_size: u64,
    /// bytes kept free on the folder's file system (default 64 MiB)
    #[argh(option, default = "64 << 20")]
    disk_reserve: u64,
    /// bytes one address may hold granted and not yet written over the transfers it opened
    /// (default 1 GiB)
    #[argh(option, default = "1 << 30")]
    max_peer_reserve: u64,
    /// connections per transfer, MaxConnections (default 8)
    #[argh(option, default = "8")]
    transfer_connections: u32,
    /// transfers at once, push and pull (default 64)
    #[argh(option, default = "64")]
    max_transfers: usize,
    /// seconds partial transfers and completed TransferIds are kept (default 86400)
    #[argh(option, default = "86400")]
    retention: u64,
    /// refuse 1.1.0 senders (426)
    #[argh(switch)]
    no_v110: bool,
    /// send pull chunks with send(2) from the file mapping (after a pread pass for the CRC)
    #[argh(switch)]
    pull_zero_copy: bool,
    /// request path (default /fastdp-endpoint)
    #[argh(option, default = "String::from(\"/fastdp-endpoint\")")]
    path: String,
    /// seconds a write may make no progress (default 30)
    #[argh(option, default = "30")]
    io_timeout: u64,
    /// seconds a peer may stay silent between frames (default 60)
    #[argh(option, default = "60")]
    idle_timeout: u64,
    /// seconds in which a frame must advance by 64 KiB (default 30)
    #[argh(option, default = "30")]
    frame_timeout: u64,
    /// seconds for the request head, and for the header after the 101 (default 10)
    #[argh(option, default = "10")]
    head_timeout: u64,
    /// also rescan the whole folder every SECONDS (polling fallback where inotify sees
    /// nothing); the folder is followed live by default, SIGHUP rescans
    #[argh(option)]
    watch: Option<u64>,
    /// do not follow the folder live (no inotify)
    #[argh(switch)]
    no_follow: bool,
    /// most concurrent connections (default: what the open-file limit allows, at most 1024);
    /// beyond: 503
    #[argh(option, default = "default_max_connections(1)")]
    max_connections: usize,
    /// most concurrent connections from one IP address (default a quarter of
    /// --max-connections); beyond: 503, while other addresses are still served
    #[argh(option)]
    max_per_ip: Option<usize>,
    /// log transfers and errors on stderr
    #[argh(switch, short = 'v')]
    verbose: bool,
    /// print the listening line as JSON
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// Upload files (1.2.0 push: parallel, resumable; or 1.1.0 with --v1, as cli.py sends).
#[argh(subcommand, name = "send")]
pub(crate) struct FastdpSendArgs {
    /// files to send
    #[argh(positional)]
    files: Vec<PathBuf>,
    /// server address HOST:PORT (default 127.0.0.1:5423)
    #[argh(option, default = "String::from(\"127.0.0.1:5423\")")]
    addr: String,
    /// connections per file (default 4)
    #[argh(option, default = "4")]
    parallel: usize,
    /// chunk compression: none or zstd (1.2.0); None, Zstd, Zip or TarGz with --v1
    #[argh(option)]
    compress: Option<String>,
    /// speak FastDP 1.1.0 as cli.py does (one connection, whole-file compression, no resume)
    #[argh(switch)]
    v1: bool,
    /// recycle each connection after this many payload bytes (default 524288000; 0: never)
    #[argh(option)]
    reconnect_bytes: Option<u64>,
    /// seconds for a connect or a write without progress (default 30)
    #[argh(option, default = "30")]
    io_timeout: u64,
    /// retries in a row without progress before giving up (default 8: nine attempts)
    #[argh(option, default = "8")]
    retries: u32,
    /// log every retry and CRC repair on stderr (the first retry after progress is always said)
    #[argh(switch, short = 'v')]
    verbose: bool,
    /// print one JSON object per file
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// Download catalog files by name or SHA-256 (pull), resumable, verified before they appear.
#[argh(subcommand, name = "get")]
pub(crate) struct FastdpGetArgs {
    /// names or SHA-256 ids (64 hex digits)
    #[argh(positional)]
    items: Vec<String>,
    /// server address HOST:PORT (default 127.0.0.1:5423)
    #[argh(option, default = "String::from(\"127.0.0.1:5423\")")]
    addr: String,
    /// output folder (default ./output)
    #[argh(option, default = "PathBuf::from(\"output\")")]
    out: PathBuf,
    /// connections per file (default 4)
    #[argh(option, default = "4")]
    parallel: usize,
    /// accept zstd chunks: none or zstd (default none)
    #[argh(option, default = "String::from(\"none\")")]
    compress: String,
    /// seconds for a connect or a write without progress (default 30)
    #[argh(option, default = "30")]
    io_timeout: u64,
    /// retries in a row without progress before giving up (default 8: nine attempts)
    #[argh(option, default = "8")]
    retries: u32,
    /// log every retry on stderr (the first retry after progress is always said)
    #[argh(switch, short = 'v')]
    verbose: bool,
    /// print one JSON object per file
    #[argh(switch)]
    json: bool,
}

pub(crate) fn run(args: FastdpArgs) -> Result<u8, Failure> {
    match args.cmd {
        FastdpCmd::Serve(a) => serve(a),
        FastdpCmd::Send(a) => send(a),
        FastdpCmd::Get(a) => get(a),
    }
}

/// The FastDP service of a folder's catalog (also used by `ferry serve`).
pub(crate) fn service(
    cat: Arc<ferry::catalog::CatalogHandle>,
    cfg: FastdpConfig,
) -> Result<Arc<FastdpService>, Failure> {
    Ok(Arc::new(FastdpService::new(cat, cfg).map_err(local)?))
}

fn serve(a: FastdpServeArgs) -> Result<u8, Failure> {
    let dir = a.root.unwrap_or_else(|| PathBuf::from("share"));
    let shutdown = Shutdown::new();
    server::install_signal_handlers(&shutdown).map_err(local)?;
    let (cat, watcher) = open_catalog(&dir, a.verbose, Follow::new(a.no_follow, a.watch))?;
    if a.transfer_connections == 0 {
        return Err(local("--transfer-connections must be at least 1"));
    }
    let cfg = FastdpConfig {
        rules: RequestRules {
            path: a.path,
            accept_v110: !a.no_v110,
        },
        max_file_size: a.max_file_size,
        disk_reserve: a.disk_reserve,
        max_peer_reserve: a.max_peer_reserve,
        max_connections: a.transfer_connections,
        max_transfers: a.max_transfers,
        retention: Duration::from_secs(a.retention),
        pull_zero_copy: a.pull_zero_copy,
        limits: ferry::proto::fastdp::schedule::Limits {
            idle: Duration::from_secs(a.idle_timeout.max(1)),
            stall_window: Duration::from_secs(a.frame_timeout.max(1)),
            head_timeout: Duration::from_secs(a.head_timeout.max(1)),
            header_timeout: Duration::from_secs(a.head_timeout.max(1)),
            ..Default::default()
        },
        verbose: a.verbose,
    };
    let svc = service(cat.clone(), cfg)?;
    let limits = limits(a.max_connections, a.io_timeout);
    let l = bind(
        "fastdp",
        &a.bind,
        tcp_listener(&a.bind, None, &limits, a.verbose)
            .max_per_ip(super::tej::max_per_ip(a.max_per_ip, a.max_connections)),
    )?;
    let builder = ServerBuilder::new(limits.shutdown_grace, shutdown.clone()).listener(l, svc);
    run_servers(builder, shutdown, cat, watcher, a.verbose, a.json)
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::Local(_) => EXIT_LOCAL,
            ClientError::Network(_) => EXIT_NETWORK,
            ClientError::Refused(_) => EXIT_PROTOCOL,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

/// A progress line on stderr, drawn only on a terminal, at most 10 times a second.
struct ProgressLine {
    on: bool,
    label: String,
    started: Instant,
    last: Mutex<Option<Instant>>,
}

impl ProgressLine {
    fn new(label: &str, json: bool) -> ProgressLine {
        ProgressLine {
            on: !json && std::io::stderr().is_terminal(),
            label: label.to_owned(),
            started: Instant::now(),
            last: Mutex::new(None),
        }
    }

    fn update(&self, p: Progress) {
        if !self.on {
            return;
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < Duration::from_millis(100)) && p.done < p.total {
            return;
        }
        *last = Some(Instant::now());
        let pct = if p.total == 0 {
            100.0
        } else {
            p.done as f64 * 100.0 / p.total as f64
        };
        let rate = p.done as f64 / 1e6 / self.started.elapsed().as_secs_f64().max(1e-3);
        let mut e = std::io::stderr().lock();
        let _ = write!(
            e,
            "\r\x1b[K{}: {pct:5.1}% {:.1}/{:.1} MB {rate:.1} MB/s",
            self.label,
            p.done as f64 / 1e6,
            p.total as f64 / 1e6
        );
        let _ = e.flush();
    }

    fn clear(&self) {
        if self.on && self.last.lock().map(|l| l.is_some()).unwrap_or(false) {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        }
    }
}

fn options(
    addr: String,
    parallel: usize,
    compress: Compress,
    io_timeout: u64,
    retries: u32,
    verbose: bool,
) -> ClientOptions {
    ClientOptions {
        addr,
        parallel: parallel.max(1),
        compress,
        io_timeout: Duration::from_secs(io_timeout.max(1)),
        max_retries: retries,
        verbose,
        ..ClientOptions::default()
    }
}

fn send(a: FastdpSendArgs) -> Result<u8, Failure> {
    if a.files.is_empty() {
        return Err(local("name at least one file to send"));
    }
    // Nothing of ours to remove: the server keeps what it acknowledged for the rerun, and a
    // 1.1.0 compressed form is an unnamed temporary.
    on_interrupt(OnInterrupt::Exit("fastdp send"));
    let v1_kind = if a.v1 {
        Some(match a.compress.as_deref().unwrap_or("None") {
            "None" => V110Compress::None,
            "Zstd" => V110Compress::Zstd,
            "Zip" => V110Compress::Zip,
            "TarGz" => V110Compress::TarGz,
            other => {
                return Err(local(format!(
                    "--v1 --compress must be None, Zstd, Zip or TarGz, not {other:?}"
                )))
            }
        })
    } else {
        None
    };
    let compress = match (a.v1, a.compress.as_deref().unwrap_or("none")) {
        (true, _) | (false, "none") => Compress::None,
        (false, "zstd") => Compress::Zstd,
        (false, other) => {
            return Err(local(format!(
                "--compress must be none or zstd, not {other:?} (Zip and TarGz need --v1)"
            )))
        }
    };
    let mut opts = options(
        a.addr,
        a.parallel,
        compress,
        a.io_timeout,
        a.retries,
        a.verbose,
    );
    opts.reconnect_bytes = a.reconnect_bytes;
    let mut worst = EXIT_OK;
    for f in &a.files {
        let r = match v1_kind {
            Some(kind) => send_v110(&opts, f, kind).map(|r| {
                report_json_or(a.json, &r, || {
                    format!(
                        "fastdp: {} sent as 1.1.0 {} ({:.1} MB on the wire) in {:.2} s: {}",
                        r.file,
                        r.compress,
                        r.wire_bytes as f64 / 1e6,
                        r.seconds,
                        r.reply
                    )
                })
            }),
            None => {
                let line = ProgressLine::new(&label(f), a.json);
                let r = fdp::push(&opts, f, &|p| line.update(p));
                line.clear();
                r.map(|r| {
                    report_json_or(a.json, &r, || {
                        format!(
                            "fastdp: {} stored as {:?}: {:.1} MB in {:.2} s ({:.1} MB/s), {} of {} chunks already held, {} connections, {} retries",
                            r.file,
                            r.stored_as,
                            r.size as f64 / 1e6,
                            r.seconds,
                            r.size as f64 / 1e6 / r.seconds.max(1e-9),
                            r.chunks_held,
                            r.chunks,
                            r.connections,
                            r.retries
                        )
                    })
                })
            }
        };
        if let Err(e) = r {
            let fail = Failure::from(e);
            // Named once: local errors name the file already, network ones do not.
            let path = f.display().to_string();
            if fail.message.contains(&path) {
                eprintln!("ferry: {}", fail.message);
            } else {
                eprintln!("ferry: {path}: {}", fail.message);
            }
            worst = worst.max(fail.code);
        }
    }
    Ok(worst)
}

fn label(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

fn report_json_or<T: serde::Serialize>(json: bool, r: &T, text: impl FnOnce() -> String) {
    if json {
        out!("{}", serde_json::to_string(r).unwrap_or_default());
    } else {
        eprintln!("{}", text());
    }
}

fn get(a: FastdpGetArgs) -> Result<u8, Failure> {
    if a.items.is_empty() {
        return Err(local("name at least one file (name or SHA-256)"));
    }
    // The partial download under OUT/.ferry/fastdp is the resume state: the rerun continues it.
    on_interrupt(OnInterrupt::Exit("fastdp get"));
    let compress = match a.compress.as_str() {
        "none" => Compress::None,
        "zstd" => Compress::Zstd,
        other => {
            return Err(local(format!(
                "--compress must be none or zstd, not {other:?}"
            )))
        }
    };
    let opts = options(
        a.addr,
        a.parallel,
        compress,
        a.io_timeout,
        a.retries,
        a.verbose,
    );
    // A mistyped address fails before the output folder is made.
    fdp::check_address(&opts.addr)?;
    ferry::dir::create_dir_all(&a.out).map_err(|e| local(format!("{}: {e}", a.out.display())))?;
    let mut worst = EXIT_OK;
    for item in &a.items {
        let line = ProgressLine::new(item, a.json);
        let r = fdp::pull(&opts, item, &a.out, &|p| line.update(p));
        line.clear();
        match r {
            Ok(r) => report_json_or(a.json, &r, || {
                format!(
                    "fastdp: {} -> {} ({:.1} MB, sha256 {}) in {:.2} s ({:.1} MB/s)",
                    r.target,
                    r.path,
                    r.size as f64 / 1e6,
                    r.sha256,
                    r.seconds,
                    r.size as f64 / 1e6 / r.seconds.max(1e-9)
                )
            }),
            Err(e) => {
                let fail = Failure::from(e);
                eprintln!("ferry: {item}: {}", fail.message);
                worst = worst.max(fail.code);
            }
        }
    }
    Ok(worst)
}
