//! `ferry jtp serve | get | list`.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use argh::FromArgs;

use ferry::config::JtpConfig;
use ferry::driver::jtp::client::{Client, ClientError, ClientOptions, Mode, Summary};
use ferry::driver::jtp::server::JtpService;
use ferry::proto::jtp::wire::FileType;
use ferry::proto::jtp::ALPN as ALPN_JTP;
use ferry::server::{self, ServerBuilder, Shutdown};
use ferry::wire::hex;

use super::*;

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::Connect(_)
            | ClientError::Io(_)
            | ClientError::TimedOut(_)
            | ClientError::Closed { .. } => EXIT_NETWORK,
            ClientError::Protocol(_) | ClientError::Server { .. } => EXIT_PROTOCOL,
            ClientError::Local(_) => EXIT_LOCAL,
        };
        Failure {
            code,
            message: format!("jtp: {e}"),
        }
    }
}

#[derive(FromArgs)]
/// JTP: binary image-catalog protocol over TCP/TLS (LIST, GET, BATCH delta sync, WATCH).
#[argh(subcommand, name = "jtp")]
pub(crate) struct JtpArgs {
    #[argh(subcommand)]
    cmd: JtpCmd,
}

#[derive(FromArgs)]
#[argh(subcommand)]
pub(crate) enum JtpCmd {
    Serve(JtpServeArgs),
    Get(JtpGetArgs),
    List(JtpListArgs),
}

#[derive(FromArgs)]
/// Serve an image folder over JTP (flags of the reference server, plus ferry's).
#[argh(subcommand, name = "serve")]
pub(crate) struct JtpServeArgs {
    /// listen address (default 127.0.0.1:8443)
    #[argh(option, default = "String::from(\"127.0.0.1:8443\")")]
    bind: String,
    /// images folder (default ./images, created if missing)
    #[argh(option)]
    images: Option<PathBuf>,
    /// alias of --images
    #[argh(option)]
    images_dir: Option<PathBuf>,
    /// TLS certificate chain (PEM); with --key; default: generated into DIR/.ferry/tls/
    #[argh(option)]
    cert: Option<PathBuf>,
    /// TLS private key (PEM: PKCS#8, PKCS#1 or SEC1)
    #[argh(option)]
    key: Option<PathBuf>,
    /// serve only names containing SUBSTR (ASCII case-insensitive)
    #[argh(option)]
    only: Option<String>,
    /// alias of --only
    #[argh(option)]
    name_contains: Option<String>,
    /// send zstd only when compressed/original is below R (default 0.95; 0 = never)
    #[argh(option)]
    compression_threshold: Option<f64>,
    /// alias of --compression-threshold
    #[argh(option)]
    compress_threshold: Option<f64>,
    /// seconds a keep-alive connection may idle between requests (default 30)
    #[argh(option, default = "30")]
    keep_alive_timeout: u64,
    /// connections plus keep-alive requests allowed per IP per window (default: off)
    #[argh(option)]
    rate_limit: Option<u32>,
    /// rate-limit window in seconds (default 60)
    #[argh(option, default = "60")]
    rate_limit_window: u64,
    /// plain TCP (no TLS)
    #[argh(switch)]
    no_tls: bool,
    /// alias of --no-tls
    #[argh(switch)]
    plain: bool,
    /// do not set TCP_NODELAY
    #[argh(switch)]
    no_tcp_nodelay: bool,
    /// also rescan the whole folder every 5 s (polling fallback where inotify sees nothing);
    /// WATCH is enabled whenever the folder is followed, which is the default
    #[argh(switch)]
    watch: bool,
    /// also rescan the whole folder every SECONDS (implies --watch; minimum 1)
    #[argh(option)]
    watch_interval: Option<u64>,
    /// do not follow the folder live (no inotify); WATCH then needs --watch or --watch-interval
    #[argh(switch)]
    no_follow: bool,
    /// seconds without progress on a read or write (default 30)
    #[argh(option, default = "30")]
    io_timeout: u64,
    /// most concurrent connections (default: what the open-file limit allows, at most 1024)
    #[argh(option, default = "default_max_connections(1)")]
    max_connections: usize,
    /// most concurrent connections from one IP address (default a quarter of
    /// --max-connections)
    #[argh(option)]
    max_per_ip: Option<usize>,
    /// log connections (peer, requests, bytes, outcome) and errors on stderr
    #[argh(switch, short = 'v')]
    verbose: bool,
    /// print the listening line (stdout) and the start-up report (stderr) as JSON objects
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// Download images from a JTP server into a folder, verified, atomically, never clobbering.
#[argh(subcommand, name = "get")]
pub(crate) struct JtpGetArgs {
    /// ids (16 hex digits) to fetch; default the whole catalog. A `jtp://` argument is the address.
    #[argh(positional)]
    ids: Vec<String>,
    /// server address HOST:PORT (default 127.0.0.1:8443)
    #[argh(option)]
    addr: Option<String>,
    /// output folder (default ./output, created if missing)
    #[argh(option)]
    out: Option<PathBuf>,
    /// alias of --out
    #[argh(option)]
    output: Option<PathBuf>,
    /// TLS (the default)
    #[argh(switch)]
    tls: bool,
    /// alias of --tls
    #[argh(switch)]
    secure: bool,
    /// plain TCP
    #[argh(switch)]
    no_tls: bool,
    /// alias of --no-tls
    #[argh(switch)]
    plain: bool,
    /// trust anchors (PEM) for the server certificate; default: Mozilla roots
    #[argh(option)]
    cert: Option<PathBuf>,
    /// TLS name to verify and send (default: host of --addr)
    #[argh(option)]
    server_name: Option<String>,
    /// delta sync: only images missing from the output folder
    #[argh(switch)]
    batch: bool,
    /// alias of --batch
    #[argh(switch)]
    delta: bool,
    /// LIST then LIST_AND_GET on one connection
    #[argh(switch)]
    list_and_get: bool,
    /// subscribe to new images and print them until Ctrl-C
    #[argh(switch, short = 'w')]
    watch: bool,
    /// reuse one connection per worker across requests and repeats
    #[argh(switch, short = 'k')]
    keep_alive: bool,
    /// parallel connections for GET (1..32, default 1)
    #[argh(option, short = 'p', default = "1")]
    parallel: usize,
    /// repeat the transfer N times (default 1)
    #[argh(option, default = "1")]
    repeat: usize,
    /// do not set TCP_NODELAY
    #[argh(switch)]
    no_tcp_nodelay: bool,
    /// seconds without progress on connect, read or write (default 30)
    #[argh(option, default = "30")]
    io_timeout: u64,
    /// fsync every file before renaming it into place
    #[argh(switch)]
    fsync: bool,
    /// on a connection failure, ask again up to N times (default 0): complete files are kept,
    /// and with --batch only what is still missing is sent again
    #[argh(option, default = "0")]
    retries: u32,
    /// log each image on stderr
    #[argh(switch, short = 'v')]
    verbose: bool,
    /// print the result as JSON on stdout
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// List a JTP server's catalog.
#[argh(subcommand, name = "list")]
pub(crate) struct JtpListArgs {
    /// server address HOST:PORT (default 127.0.0.1:8443)
    #[argh(option)]
    addr: Option<String>,
    /// a jtp:// address, as a positional alternative to --addr
    #[argh(positional)]
    target: Option<String>,
    /// TLS (the default)
    #[argh(switch)]
    tls: bool,
    /// alias of --tls
    #[argh(switch)]
    secure: bool,
    /// plain TCP
    #[argh(switch)]
    no_tls: bool,
    /// alias of --no-tls
    #[argh(switch)]
    plain: bool,
    /// trust anchors (PEM) for the server certificate; default: Mozilla roots
    #[argh(option)]
    cert: Option<PathBuf>,
    /// TLS name to verify and send (default: host of --addr)
    #[argh(option)]
    server_name: Option<String>,
    /// seconds without progress (default 30)
    #[argh(option, default = "30")]
    io_timeout: u64,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

pub(crate) fn run(args: JtpArgs) -> Result<u8, Failure> {
    match args.cmd {
        JtpCmd::Serve(a) => jtp_serve(a),
        JtpCmd::Get(a) => jtp_get(a),
        JtpCmd::List(a) => jtp_list(a),
    }
}

fn jtp_serve(a: JtpServeArgs) -> Result<u8, Failure> {
    let dir = either(a.images, a.images_dir).unwrap_or_else(|| PathBuf::from("images"));
    let threshold = either(a.compression_threshold, a.compress_threshold).unwrap_or(0.95);
    if !threshold.is_finite() {
        return Err(local("--compression-threshold must be a number"));
    }
    let watch = match (a.watch_interval, a.watch) {
        (Some(s), _) => Some(s),
        (None, true) => Some(5),
        _ => None,
    };
    let follow = Follow::new(a.no_follow, watch);
    report_as_json(a.json);
    let verbose = a.verbose;
    let shutdown = Shutdown::new();
    server::install_signal_handlers(&shutdown).map_err(local)?;
    let (cat, watcher) = open_catalog(&dir, verbose, follow)?;
    let cfg = JtpConfig {
        bind: a.bind.clone(),
        tls: tls_source(a.no_tls || a.plain, a.cert, a.key)?,
        only: either(a.only, a.name_contains),
        compression_threshold: threshold.clamp(0.0, 1.0),
        rate_limit: a.rate_limit.filter(|n| *n > 0),
        rate_limit_window: Duration::from_secs(a.rate_limit_window.max(1)),
        watch_interval: follow.jtp_watch(),
        verbose,
    };
    let mut limits = limits(a.max_connections, a.io_timeout);
    limits.keep_alive_timeout = Duration::from_secs(a.keep_alive_timeout);
    let tls = load_tls(&cfg.tls, &cat, ALPN_JTP)?;
    let jtp = Arc::new(JtpService::new(cat.clone(), cfg, limits.clone()));
    let l = tcp_listener(&a.bind, tls, &limits, verbose)
        .nodelay(!a.no_tcp_nodelay)
        .max_per_ip(super::tej::max_per_ip(a.max_per_ip, a.max_connections));
    let l = bind("jtp", &a.bind, l)?;
    let builder = ServerBuilder::new(limits.shutdown_grace, shutdown.clone()).listener(l, jtp);
    run_servers(builder, shutdown, cat, watcher, verbose, a.json)
}

pub(crate) fn client_options(
    addr: Option<String>,
    positional_addr: Option<String>,
    plain: bool,
    cert: Option<PathBuf>,
    server_name: Option<String>,
    io_timeout: u64,
) -> ClientOptions {
    ClientOptions {
        addr: addr
            .or(positional_addr)
            .unwrap_or_else(|| "127.0.0.1:8443".into()),
        tls: !plain,
        cert,
        server_name,
        io_timeout: Duration::from_secs(io_timeout.max(1)),
        ..ClientOptions::default()
    }
}

/// The type bits of a listing as a word: `png`, `jpeg`, `webp`, `bmp`, `gif` or `other`.
fn type_word(bits: u8) -> &'static str {
    match FileType::from_bits(bits) {
        FileType::Png => "png",
        FileType::Jpeg => "jpeg",
        FileType::Webp => "webp",
        FileType::Bmp => "bmp",
        FileType::Gif => "gif",
        FileType::Other => "other",
    }
}

pub(crate) fn jtp_list(a: JtpListArgs) -> Result<u8, Failure> {
    let _ = (a.tls, a.secure);
    let target = match a.target {
        Some(t) if t.starts_with("jtp://") => Some(t),
        Some(t) => return Err(local(format!("unexpected argument {t:?}"))),
        None => None,
    };
    let opts = client_options(
        a.addr,
        target,
        a.no_tls || a.plain,
        a.cert,
        a.server_name,
        a.io_timeout,
    );
    let client = Client::new(opts)?;
    on_interrupt(OnInterrupt::Exit("jtp list"));
    let list = client.list()?;
    if a.json {
        out!("{}", serde_json::to_string(&list).unwrap_or_default());
    } else {
        for l in &list {
            out!(
                "{}  {:<5}  {:>10}  {}",
                hex::encode_u64(l.id),
                type_word(l.ftype),
                l.size,
                shown(&l.name)
            );
        }
    }
    if list.is_empty() {
        eprintln!("jtp: no files");
        return Ok(EXIT_PARTIAL);
    }
    Ok(EXIT_OK)
}

pub(crate) fn jtp_get(a: JtpGetArgs) -> Result<u8, Failure> {
    let _ = (a.tls, a.secure);
    let mut positional_addr = None;
    let mut ids = Vec::new();
    for s in &a.ids {
        if s.starts_with("jtp://") {
            positional_addr = Some(s.clone());
        } else {
            ids.push(
                hex::parse_u64(s)
                    .ok_or_else(|| local(format!("not an image id (16 hex digits): {s:?}")))?,
            );
        }
    }
    let mut opts = client_options(
        a.addr,
        positional_addr,
        a.no_tls || a.plain,
        a.cert,
        a.server_name,
        a.io_timeout,
    );
    opts.keep_alive = a.keep_alive;
    opts.parallel = a.parallel.clamp(1, 32);
    opts.repeat = a.repeat.max(1);
    opts.nodelay = !a.no_tcp_nodelay;
    opts.verbose = a.verbose;
    opts.durable = a.fsync;
    let client = Client::new(opts)?;
    let stop = Arc::new(AtomicBool::new(false));
    on_interrupt(OnInterrupt::Stop(stop.clone()));
    if a.watch {
        let json = a.json;
        client.watch(&stop, &mut |l| {
            if json {
                out!("{}", serde_json::to_string(l).unwrap_or_default());
            } else {
                out!(
                    "NEW  id={} type={} size={} name={}",
                    hex::encode_u64(l.id),
                    l.ftype,
                    l.size,
                    shown(&l.name)
                );
            }
        })?;
        return Ok(EXIT_OK);
    }
    let out = either(a.out, a.output).unwrap_or_else(|| PathBuf::from("output"));
    let mode = if a.batch || a.delta {
        Mode::Batch
    } else if a.list_and_get {
        Mode::ListAndGet
    } else {
        Mode::Get
    };
    let wanted = (!ids.is_empty()).then_some(ids);
    let drawer = progress::Drawer::start(client.progress(), progress::Unit::Images, a.json);
    let got = get_with_retries(&client, &out, wanted, mode, &stop, a.retries);
    drawer.finish();
    let s = got?;
    if a.json {
        out!("{}", serde_json::to_string(&s).unwrap_or_default());
    } else {
        let mb = s.bytes as f64 / 1e6;
        eprintln!(
            "jtp: {} images ({} new), {:.1} MB in {:.2} s ({:.1} MB/s, {:.0} images/s){}{}",
            s.images,
            s.created(),
            mb,
            s.seconds,
            mb / s.seconds.max(1e-9),
            s.images as f64 / s.seconds.max(1e-9),
            if s.corrupt.is_empty() {
                String::new()
            } else {
                format!(", {} corrupt", s.corrupt.len())
            },
            if s.missing.is_empty() {
                String::new()
            } else {
                format!(", {} missing: {}", s.missing.len(), missing_list(&s))
            },
        );
    }
    Ok(if s.cancelled {
        EXIT_INTERRUPTED
    } else if s.is_partial() || s.images == 0 {
        EXIT_PARTIAL
    } else {
        EXIT_OK
    })
}

/// [`Client::get`] asked again after a connection failure, up to `retries` times, with a growing
/// pause. Images already complete in `out` are recognised and kept, not written twice.
fn get_with_retries(
    client: &Client,
    out: &std::path::Path,
    ids: Option<Vec<u64>>,
    mode: Mode,
    stop: &AtomicBool,
    retries: u32,
) -> Result<Summary, ClientError> {
    let mut pause = Duration::from_millis(200);
    let mut attempt = 0;
    loop {
        match client.get(out, ids.clone(), mode, stop) {
            Err(
                e @ (ClientError::Connect(_)
                | ClientError::Io(_)
                | ClientError::TimedOut(_)
                | ClientError::Closed { .. }),
            ) if attempt < retries && !stop.load(Ordering::SeqCst) => {
                attempt += 1;
                eprintln!("jtp: {e}; asking again ({attempt} of {retries})");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            r => return r,
        }
    }
}

/// Most missing images named in the summary line.
const MAX_NAMED_MISSING: usize = 10;

/// `6532b96544f38db1 (beta.png), 00000000000000cc` for the first few missing ids, with the
/// listed name when the LIST had one (escaped: it comes from the server).
fn missing_list(s: &Summary) -> String {
    let mut out: Vec<String> = s
        .missing
        .iter()
        .take(MAX_NAMED_MISSING)
        .map(|id| match s.missing_names.get(id) {
            Some(name) => format!("{} ({})", hex::encode_u64(*id), shown(name)),
            None => hex::encode_u64(*id),
        })
        .collect();
    if s.missing.len() > MAX_NAMED_MISSING {
        out.push(format!("and {} more", s.missing.len() - MAX_NAMED_MISSING));
    }
    out.join(", ")
}
