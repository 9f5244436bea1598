//! `ferry tej serve | send | get | list`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use argh::FromArgs;

use ferry::driver::tej::client as tej_client;
use ferry::driver::tej::server::{TejConfig, TejService};
use ferry::proto::tej::frame::Limits as TejLimits;
use ferry::proto::tej::ALPN as ALPN_TEJ;
use ferry::server::{self, ServerBuilder, Shutdown};

use super::*;

#[derive(FromArgs)]
/// TEJ: full-duplex frames of files plus a message over TCP (tej-protoc compatible).
#[argh(subcommand, name = "tej")]
pub(crate) struct TejArgs {
    #[argh(subcommand)]
    cmd: TejCmd,
}

#[derive(FromArgs)]
#[argh(subcommand)]
pub(crate) enum TejCmd {
    Serve(TejServeArgs),
    Send(TejSendArgs),
    Get(TejGetArgs),
    List(TejListArgs),
}

#[derive(FromArgs)]
/// Receive TEJ frames into a folder and answer ferry's requests from its catalog.
#[argh(subcommand, name = "serve")]
pub(crate) struct TejServeArgs {
    /// listen address (default 127.0.0.1:8000)
    #[argh(option, default = "String::from(\"127.0.0.1:8000\")")]
    bind: String,
    /// folder served and filled (default ./share, created if missing)
    #[argh(option)]
    root: Option<PathBuf>,
    /// TLS (ferry to ferry); certificate from --cert/--key or generated into ROOT/.ferry/tls/
    #[argh(switch)]
    tls: bool,
    /// TLS certificate chain (PEM)
    #[argh(option)]
    cert: Option<PathBuf>,
    /// TLS private key (PEM)
    #[argh(option)]
    key: Option<PathBuf>,
    /// most files in one frame (default 10000)
    #[argh(option, default = "10_000")]
    max_files: u64,
    /// largest file accepted, in bytes (default 64 GiB)
    #[argh(option, default = "64 << 30")]
    max_file_size: u64,
    /// largest message accepted, in bytes (default 16 MiB)
    #[argh(option, default = "16 << 20")]
    max_message: u64,
    /// bytes kept free on the folder's file system (default 64 MiB)
    #[argh(option, default = "64 << 20")]
    disk_reserve: u64,
    /// seconds a connection may stay silent between frames (default 120)
    #[argh(option, default = "120")]
    idle_timeout: u64,
    /// seconds in which a frame must advance by 64 KiB (default 30)
    #[argh(option, default = "30")]
    frame_timeout: u64,
    /// seconds a write may make no progress, and the bound of each read while a connection is
    /// set up (TLS handshake) (default 30)
    #[argh(option, default = "30")]
    io_timeout: u64,
    /// refuse frames whose version byte is not 1
    #[argh(switch)]
    strict_version: bool,
    /// also rescan the whole folder every SECONDS (polling fallback where inotify sees
    /// nothing); the folder is followed live by default, SIGHUP rescans
    #[argh(option)]
    watch_interval: Option<u64>,
    /// alias of --watch-interval
    #[argh(option)]
    watch: Option<u64>,
    /// do not follow the folder live (no inotify): files put there by other means are served
    /// after SIGHUP or a --watch-interval rescan
    #[argh(switch)]
    no_follow: bool,
    /// most concurrent connections (default: what the open-file limit allows, at most 1024)
    #[argh(option, default = "default_max_connections(1)")]
    max_connections: usize,
    /// most concurrent connections from one IP address (default a quarter of
    /// --max-connections)
    #[argh(option)]
    max_per_ip: Option<usize>,
    /// seconds a connection may go without a frame other than pings and replies before it
    /// gets `timeout` (default 600): pings alone never keep a connection
    #[argh(option, default = "600")]
    max_idle_life: u64,
    /// most bytes of disk one IP address may hold for its unfinished uploads at once (space is
    /// taken 64 MiB ahead of the data, never the whole declared size) (default 1 GiB)
    #[argh(option, default = "1 << 30")]
    max_peer_reserve: u64,
    /// log frames, messages and stored files on stderr
    #[argh(switch, short = 'v')]
    verbose: bool,
    /// print the listening line (stdout) and the start-up report (stderr) as JSON objects
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// Send files and a message in one frame; exit 0 only when the acknowledgement matches.
#[argh(subcommand, name = "send")]
pub(crate) struct TejSendArgs {
    /// files to send
    #[argh(positional)]
    files: Vec<PathBuf>,
    /// server address HOST:PORT (default 127.0.0.1:8000)
    #[argh(option, default = "String::from(\"127.0.0.1:8000\")")]
    addr: String,
    /// message sent with the files
    #[argh(option)]
    message: Option<String>,
    /// frame status: 0 (deliver, acknowledged; the default) or 7..127 (an application's frame,
    /// not acknowledged); 1..6 are TEJ's own and refused
    #[argh(option, default = "0")]
    status: u8,
    /// seconds to wait for the acknowledgement (default 60)
    #[argh(option, default = "60")]
    ack_timeout: u64,
    /// TLS (ferry to ferry)
    #[argh(switch)]
    tls: bool,
    /// trust anchors (PEM)
    #[argh(option)]
    cert: Option<PathBuf>,
    /// TLS name to verify (default: host of --addr)
    #[argh(option)]
    server_name: Option<String>,
    /// seconds without progress (default 30)
    #[argh(option, default = "30")]
    io_timeout: u64,
    /// log frames received while waiting
    #[argh(switch, short = 'v')]
    verbose: bool,
    /// print the report (with the acknowledgement) as JSON
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// Fetch catalog files by name or SHA-256 into a folder, verified against the manifest.
#[argh(subcommand, name = "get")]
pub(crate) struct TejGetArgs {
    /// names or SHA-256 ids (64 hex digits)
    #[argh(positional)]
    items: Vec<String>,
    /// server address HOST:PORT (default 127.0.0.1:8000)
    #[argh(option, default = "String::from(\"127.0.0.1:8000\")")]
    addr: String,
    /// output folder (default ./output)
    #[argh(option, default = "PathBuf::from(\"output\")")]
    out: PathBuf,
    /// TLS (ferry to ferry)
    #[argh(switch)]
    tls: bool,
    /// trust anchors (PEM)
    #[argh(option)]
    cert: Option<PathBuf>,
    /// TLS name to verify (default: host of --addr)
    #[argh(option)]
    server_name: Option<String>,
    /// seconds without progress (default 30)
    #[argh(option, default = "30")]
    io_timeout: u64,
    /// on a connection failure, ask again up to N times (default 0); nothing is committed
    /// until one answer verifies whole
    #[argh(option, default = "0")]
    retries: u32,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// List a ferry TEJ server's catalog (name, size, SHA-256).
#[argh(subcommand, name = "list")]
pub(crate) struct TejListArgs {
    /// server address HOST:PORT (default 127.0.0.1:8000)
    #[argh(option, default = "String::from(\"127.0.0.1:8000\")")]
    addr: String,
    /// TLS (ferry to ferry)
    #[argh(switch)]
    tls: bool,
    /// trust anchors (PEM)
    #[argh(option)]
    cert: Option<PathBuf>,
    /// TLS name to verify (default: host of --addr)
    #[argh(option)]
    server_name: Option<String>,
    /// seconds without progress (default 30)
    #[argh(option, default = "30")]
    io_timeout: u64,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

pub(crate) fn run(args: TejArgs) -> Result<u8, Failure> {
    match args.cmd {
        TejCmd::Serve(a) => tej_serve(a),
        TejCmd::Send(a) => tej_send(a),
        TejCmd::Get(a) => tej_get(a),
        TejCmd::List(a) => tej_list(a),
    }
}

fn tej_serve(a: TejServeArgs) -> Result<u8, Failure> {
    let dir = a.root.unwrap_or_else(|| PathBuf::from("share"));
    let shutdown = Shutdown::new();
    server::install_signal_handlers(&shutdown).map_err(local)?;
    report_as_json(a.json);
    let follow = Follow::new(a.no_follow, either(a.watch_interval, a.watch));
    let (cat, watcher) = open_catalog(&dir, a.verbose, follow)?;
    let tls_src = tls_source(!a.tls, a.cert, a.key)?;
    let tls = load_tls(&tls_src, &cat, ALPN_TEJ)?;
    let cfg = TejConfig {
        bind: a.bind.clone(),
        tls: tls_src,
        frame: TejLimits {
            max_files: a.max_files,
            max_file_size: a.max_file_size,
            max_message: a.max_message,
            strict_version: a.strict_version,
            ..TejLimits::default()
        },
        disk_reserve: a.disk_reserve,
        idle_timeout: Duration::from_secs(a.idle_timeout.max(1)),
        stall_window: Duration::from_secs(a.frame_timeout.max(1)),
        max_idle_life: Duration::from_secs(a.max_idle_life.max(1)),
        peer_reserve: a.max_peer_reserve,
        verbose: a.verbose,
        ..TejConfig::default()
    };
    let limits = limits(a.max_connections, a.io_timeout);
    let tej = Arc::new(TejService::new(cat.clone(), cfg).map_err(local)?);
    let l = bind(
        "tej",
        &a.bind,
        tcp_listener(&a.bind, tls, &limits, a.verbose)
            .max_per_ip(max_per_ip(a.max_per_ip, a.max_connections)),
    )?;
    let builder = ServerBuilder::new(limits.shutdown_grace, shutdown.clone()).listener(l, tej);
    run_servers(builder, shutdown, cat, watcher, a.verbose, a.json)
}

/// `--max-per-ip`, by default a quarter of `--max-connections` (issue 15 item 9).
pub(crate) fn max_per_ip(flag: Option<usize>, max_connections: usize) -> usize {
    flag.unwrap_or(max_connections / 4).max(1)
}

impl From<tej_client::ClientError> for Failure {
    fn from(e: tej_client::ClientError) -> Self {
        use tej_client::ClientError as E;
        let code = match &e {
            E::Connect(_) | E::Io(_) | E::TimedOut(_) | E::Closed => EXIT_NETWORK,
            E::Frame(_)
            | E::Peer(_)
            | E::Mismatch(_)
            | E::UnsafeName(_)
            | E::Unrequested(_)
            | E::ServerSpeaksTls => EXIT_PROTOCOL,
            E::Local(_) => EXIT_LOCAL,
            E::Interrupted => EXIT_INTERRUPTED,
        };
        Failure {
            code,
            message: format!("tej: {e}"),
        }
    }
}

pub(crate) fn tej_options(
    addr: String,
    tls: bool,
    cert: Option<PathBuf>,
    server_name: Option<String>,
    io_timeout: u64,
) -> tej_client::ClientOptions {
    tej_client::ClientOptions {
        addr,
        tls,
        cert,
        server_name,
        io_timeout: Duration::from_secs(io_timeout.max(1)),
        ..tej_client::ClientOptions::default()
    }
}

pub(crate) fn tej_send(a: TejSendArgs) -> Result<u8, Failure> {
    tej_client::check_status(a.status).map_err(|e| local(format!("--status: {e}")))?;
    let mut opts = tej_options(a.addr, a.tls, a.cert, a.server_name, a.io_timeout);
    opts.ack_timeout = Duration::from_secs(a.ack_timeout);
    opts.verbose = a.verbose;
    let client = tej_client::Client::new(opts)?;
    // The server throws a partial frame away: nothing here to clean up.
    on_interrupt(OnInterrupt::Exit("tej send"));
    let message = a.message.unwrap_or_default();
    let drawer = progress::Drawer::start(client.progress(), progress::Unit::Files, a.json);
    let sent = client.send(&a.files, message.as_bytes(), a.status);
    drawer.finish();
    let r = sent?;
    if a.json {
        out!("{}", serde_json::to_string(&r).unwrap_or_default());
    } else {
        eprintln!(
            "tej: {} files, {:.1} MB in {:.2} s ({:.1} MB/s): {}",
            r.files.len(),
            r.bytes as f64 / 1e6,
            r.seconds,
            r.bytes as f64 / 1e6 / r.seconds.max(1e-9),
            r.outcome
        );
        for f in &r.files {
            match &f.stored_as {
                Some(at) => eprintln!("tej: {} -> {}", shown(&f.name), shown(at)),
                None if r.outcome == "confirmed" => eprintln!("tej: {}", shown(&f.name)),
                None => {}
            }
        }
        if r.outcome == "refused" || r.outcome == "mismatch" {
            if let Some(reply) = &r.reply {
                eprintln!("tej: reply: {}", shown(&reply.to_string()));
            }
        }
    }
    Ok(match r.outcome {
        "confirmed" => EXIT_OK,
        "unconfirmed" if a.status != 0 => EXIT_OK,
        "unconfirmed" => EXIT_PARTIAL,
        _ => EXIT_PROTOCOL,
    })
}

pub(crate) fn tej_get(a: TejGetArgs) -> Result<u8, Failure> {
    if a.items.is_empty() {
        return Err(local("name at least one file (name or SHA-256)"));
    }
    let opts = tej_options(a.addr, a.tls, a.cert, a.server_name, a.io_timeout);
    let client = tej_client::Client::new(opts)?;
    on_interrupt(OnInterrupt::Stop(client.stop_flag()));
    let drawer = progress::Drawer::start(client.progress(), progress::Unit::Files, a.json);
    let got = get_with_retries(&client, &a.out, &a.items, a.retries);
    drawer.finish();
    let stored = got?;
    if a.json {
        out!("{}", serde_json::to_string(&stored).unwrap_or_default());
    } else {
        for s in &stored {
            eprintln!(
                "tej: {} ({} bytes, sha256 {})",
                shown(&s.name),
                s.size,
                shown(&s.sha256)
            );
        }
    }
    Ok(EXIT_OK)
}

pub(crate) fn tej_list(a: TejListArgs) -> Result<u8, Failure> {
    let opts = tej_options(a.addr, a.tls, a.cert, a.server_name, a.io_timeout);
    let client = tej_client::Client::new(opts)?;
    on_interrupt(OnInterrupt::Exit("tej list"));
    let all = client.list()?;
    if a.json {
        out!("{}", serde_json::to_string(&all).unwrap_or_default());
    } else {
        for e in &all {
            out!("{}  {:>12}  {}", shown(&e.sha256), e.size, shown(&e.name));
        }
    }
    if all.is_empty() {
        eprintln!("tej: no files");
        return Ok(EXIT_PARTIAL);
    }
    Ok(EXIT_OK)
}

/// [`tej_client::Client::get`] asked again after a connection failure, up to `retries` times,
/// with a growing pause (an answer commits nothing unless it verifies whole, so asking again is
/// always safe).
fn get_with_retries(
    client: &tej_client::Client,
    out: &std::path::Path,
    items: &[String],
    retries: u32,
) -> Result<Vec<ferry::proto::tej::messages::ManifestEntry>, tej_client::ClientError> {
    use tej_client::ClientError as E;
    let mut pause = Duration::from_millis(200);
    let mut attempt = 0;
    loop {
        match client.get(out, items) {
            Err(e @ (E::Connect(_) | E::Io(_) | E::TimedOut(_) | E::Closed))
                if attempt < retries =>
            {
                attempt += 1;
                eprintln!("tej: {e}; asking again ({attempt} of {retries})");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            r => return r,
        }
    }
}
