//! The `ferry` command line: argument structs (argh), their translation into library
//! configuration, and the one place outcomes become exit codes.
//!
//! Exit codes (also in the README):
//! - 0: done;
//! - 1: nothing to do, or partial (something asked for is missing or failed verification);
//! - 2: usage or local error (bad flags, unreadable folder or certificate, cannot bind);
//! - 3: network error (connect, TLS handshake, connection lost);
//! - 4: the peer refused or broke the protocol (an error frame, bad framing);
//! - 130: interrupted by Ctrl-C before the work was done.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use argh::FromArgs;

use ferry::catalog::{CatalogHandle, CatalogOptions};
use ferry::config::{JtpConfig, Limits, TlsSource};
use ferry::driver::cjp2p::blocklist;
use ferry::driver::cjp2p::node::{self as cjp2p, DriverConfig, NodeHandle, Outcome};
use ferry::driver::jtp::client::{Client, ClientError, ClientOptions, Mode};
use ferry::driver::jtp::server::JtpService;
use ferry::driver::tej::client as tej_client;
use ferry::driver::tej::server::{TejConfig, TejService};
use ferry::proto::jtp::wire;
use ferry::proto::jtp::ALPN as ALPN_JTP;
use ferry::proto::tej::frame::Limits as TejLimits;
use ferry::proto::tej::ALPN as ALPN_TEJ;
use ferry::server::{self, Listener, ServerBuilder, Shutdown};
use ferry::transport::{self, TlsServer};

const EXIT_OK: u8 = 0;
const EXIT_PARTIAL: u8 = 1;
const EXIT_LOCAL: u8 = 2;
const EXIT_NETWORK: u8 = 3;
const EXIT_PROTOCOL: u8 = 4;
const EXIT_INTERRUPTED: u8 = 130;

/// A failure with its exit code.
struct Failure {
    code: u8,
    message: String,
}

fn local(message: impl std::fmt::Display) -> Failure {
    Failure {
        code: EXIT_LOCAL,
        message: message.to_string(),
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::Connect(_) | ClientError::Io(_) => EXIT_NETWORK,
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
/// ferry: fast, safe file transfer (JTP, and more protocols to come) over one shared catalog.
struct Cli {
    #[argh(subcommand)]
    cmd: Cmd,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Cmd {
    Serve(ServeArgs),
    Jtp(JtpArgs),
    Tej(TejArgs),
    Cjp2p(Cjp2pArgs),
    Index(IndexArgs),
    Certs(CertsArgs),
}

#[derive(FromArgs)]
/// Serve a folder on every implemented protocol (loopback by default), one shared catalog.
#[argh(subcommand, name = "serve")]
struct ServeArgs {
    /// folder to serve (default ./share, created if missing)
    #[argh(positional)]
    dir: Option<PathBuf>,
    /// JTP listen address (default 127.0.0.1:8443)
    #[argh(option, default = "String::from(\"127.0.0.1:8443\")")]
    jtp_bind: String,
    /// TEJ listen address (default 127.0.0.1:8000, plain TCP as tej-protoc speaks it)
    #[argh(option, default = "String::from(\"127.0.0.1:8000\")")]
    tej_bind: String,
    /// CJP2P UDP address (default 127.0.0.1:24254)
    #[argh(option, default = "String::from(\"127.0.0.1:24254\")")]
    cjp2p_bind: String,
    /// CJP2P peer to contact (repeatable)
    #[argh(option)]
    peer: Vec<String>,
    /// plain TCP instead of TLS for JTP
    #[argh(switch)]
    no_tls: bool,
    /// alias of --no-tls
    #[argh(switch)]
    plain: bool,
    /// TLS certificate chain (PEM); default: generated into DIR/.ferry/tls/
    #[argh(option)]
    cert: Option<PathBuf>,
    /// TLS private key (PEM)
    #[argh(option)]
    key: Option<PathBuf>,
    /// rescan the folder every SECONDS (also enables JTP WATCH); SIGHUP rescans at once
    #[argh(option)]
    watch: Option<u64>,
    /// most concurrent connections per server (default 1024)
    #[argh(option, default = "1024")]
    max_connections: usize,
    /// seconds without read/write progress before a connection is dropped (default 30)
    #[argh(option, default = "30")]
    io_timeout: u64,
    /// log connections and errors on stderr
    #[argh(switch, short = 'v')]
    verbose: bool,
    /// print listening lines and the startup report as JSON objects
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// JTP: binary image-catalog protocol over TCP/TLS (LIST, GET, BATCH delta sync, WATCH).
#[argh(subcommand, name = "jtp")]
struct JtpArgs {
    #[argh(subcommand)]
    cmd: JtpCmd,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum JtpCmd {
    Serve(JtpServeArgs),
    Get(JtpGetArgs),
    List(JtpListArgs),
}

#[derive(FromArgs)]
/// Serve an image folder over JTP (flags of the reference server, plus ferry's).
#[argh(subcommand, name = "serve")]
struct JtpServeArgs {
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
    /// rescan the folder every 5 s and enable WATCH
    #[argh(switch)]
    watch: bool,
    /// rescan interval in seconds (implies --watch; minimum 1)
    #[argh(option)]
    watch_interval: Option<u64>,
    /// seconds without progress on a read or write (default 30)
    #[argh(option, default = "30")]
    io_timeout: u64,
    /// most concurrent connections (default 1024)
    #[argh(option, default = "1024")]
    max_connections: usize,
    /// log on stderr
    #[argh(switch, short = 'v')]
    verbose: bool,
    /// print the listening line as JSON
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// Download images from a JTP server into a folder, verified, atomically, never clobbering.
#[argh(subcommand, name = "get")]
struct JtpGetArgs {
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
struct JtpListArgs {
    /// server address HOST:PORT (default 127.0.0.1:8443)
    #[argh(option)]
    addr: Option<String>,
    /// a jtp:// address, as a positional alternative to --addr
    #[argh(positional)]
    target: Option<String>,
    /// TLS (the default)
    #[argh(switch)]
    tls: bool,
    /// plain TCP
    #[argh(switch)]
    no_tls: bool,
    /// alias of --no-tls
    #[argh(switch)]
    plain: bool,
    /// trust anchors (PEM)
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

#[derive(FromArgs)]
/// TEJ: full-duplex frames of files plus a message over TCP (tej-protoc compatible).
#[argh(subcommand, name = "tej")]
struct TejArgs {
    #[argh(subcommand)]
    cmd: TejCmd,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum TejCmd {
    Serve(TejServeArgs),
    Send(TejSendArgs),
    Get(TejGetArgs),
    List(TejListArgs),
}

#[derive(FromArgs)]
/// Receive TEJ frames into a folder and answer ferry's requests from its catalog.
#[argh(subcommand, name = "serve")]
struct TejServeArgs {
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
    /// refuse frames whose version byte is not 1
    #[argh(switch)]
    strict_version: bool,
    /// most concurrent connections (default 1024)
    #[argh(option, default = "1024")]
    max_connections: usize,
    /// log frames, messages and stored files on stderr
    #[argh(switch, short = 'v')]
    verbose: bool,
    /// print the listening line as JSON
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// Send files and a message in one frame; exit 0 only when the acknowledgement matches.
#[argh(subcommand, name = "send")]
struct TejSendArgs {
    /// files to send
    #[argh(positional)]
    files: Vec<PathBuf>,
    /// server address HOST:PORT (default 127.0.0.1:8000)
    #[argh(option, default = "String::from(\"127.0.0.1:8000\")")]
    addr: String,
    /// message sent with the files
    #[argh(option)]
    message: Option<String>,
    /// custom status 0..127 (default 0, deliver: acknowledged)
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
struct TejGetArgs {
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
    /// print JSON
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// List a ferry TEJ server's catalog (name, size, SHA-256).
#[argh(subcommand, name = "list")]
struct TejListArgs {
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

#[derive(FromArgs)]
/// CJP2P: connectionless JSON peer-to-peer over UDP, content by SHA-256.
#[argh(subcommand, name = "cjp2p")]
struct Cjp2pArgs {
    #[argh(subcommand)]
    cmd: Cjp2pCmd,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Cjp2pCmd {
    Node(Cjp2pNodeArgs),
    Get(Cjp2pGetArgs),
    Peers(Cjp2pPeersArgs),
    List(Cjp2pListArgs),
}

#[derive(FromArgs)]
/// Run a node: serve a folder under SHA-256 ids and answer peers.
#[argh(subcommand, name = "node")]
struct Cjp2pNodeArgs {
    /// UDP address (default [::]:24254, falling back to 0.0.0.0:24254)
    #[argh(option)]
    bind: Option<String>,
    /// folder to serve (default ./share, created if missing)
    #[argh(option)]
    root: Option<PathBuf>,
    /// peer to contact, ip:port (repeatable); no other address is contacted unless learnt from them
    #[argh(option)]
    peer: Vec<String>,
    /// do not contact addresses advertised by peers
    #[argh(switch)]
    no_discovery: bool,
    /// log on stderr
    #[argh(switch, short = 'v')]
    verbose: bool,
    /// print the listening line as JSON
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// Download content by SHA-256 from peers, resumable, verified before it appears.
#[argh(subcommand, name = "get")]
struct Cjp2pGetArgs {
    /// the SHA-256 (64 lowercase hex digits) of the content
    #[argh(positional)]
    id: String,
    /// a peer holding it, ip:port (repeatable)
    #[argh(option)]
    peer: Vec<String>,
    /// output folder (default ./output); partial data lives in OUT/.ferry/ingest/cjp2p
    #[argh(option, default = "PathBuf::from(\"output\")")]
    out: PathBuf,
    /// file name for the result (default: the id)
    #[argh(option)]
    name: Option<String>,
    /// local UDP address (default: any port)
    #[argh(option)]
    bind: Option<String>,
    /// give up after this many seconds without progress (default 60)
    #[argh(option, default = "60")]
    timeout: u64,
    /// the id is a 256 KiB block list (cjp2p.md 7.1): fetch its blocks and assemble the file
    #[argh(switch)]
    block_list: bool,
    /// with --block-list: the SHA-256 the assembled file must have
    #[argh(option)]
    file_id: Option<String>,
    /// request size toward ferry peers, a multiple of 4096 up to 40960 (default 32768; 4096
    /// requests as the reference node does)
    #[argh(option, default = "32768")]
    block_size: u32,
    /// log on stderr
    #[argh(switch, short = 'v')]
    verbose: bool,
    /// print the result as JSON
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// Ask a peer for the peers it knows (PleaseSendPeers).
#[argh(subcommand, name = "peers")]
struct Cjp2pPeersArgs {
    /// the peer, ip:port
    #[argh(option)]
    peer: String,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// Ask a peer for part of its content list (PleaseListContent).
#[argh(subcommand, name = "list")]
struct Cjp2pListArgs {
    /// the peer, ip:port
    #[argh(option)]
    peer: String,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// Build or refresh a folder's catalog index (.ferry/index) and report what was hashed.
#[argh(subcommand, name = "index")]
struct IndexArgs {
    /// folder (default ./share)
    #[argh(positional)]
    dir: Option<PathBuf>,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// Write a test CA and a localhost/127.0.0.1/::1 certificate (for tests; `make certs`).
#[argh(subcommand, name = "certs")]
struct CertsArgs {
    /// output folder (default ./certs)
    #[argh(option, default = "PathBuf::from(\"certs\")")]
    out: PathBuf,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let strs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let cli = match Cli::from_args(&strs[..1], &strs[1..]) {
        Ok(c) => c,
        Err(early) => {
            return if early.status.is_ok() {
                println!("{}", early.output);
                ExitCode::from(EXIT_OK)
            } else {
                eprintln!("{}", early.output);
                eprintln!("Run ferry --help for usage.");
                ExitCode::from(EXIT_LOCAL)
            };
        }
    };
    let r = match cli.cmd {
        Cmd::Serve(a) => serve(a),
        Cmd::Jtp(j) => match j.cmd {
            JtpCmd::Serve(a) => jtp_serve(a),
            JtpCmd::Get(a) => jtp_get(a),
            JtpCmd::List(a) => jtp_list(a),
        },
        Cmd::Tej(t) => match t.cmd {
            TejCmd::Serve(a) => tej_serve(a),
            TejCmd::Send(a) => tej_send(a),
            TejCmd::Get(a) => tej_get(a),
            TejCmd::List(a) => tej_list(a),
        },
        Cmd::Cjp2p(c) => match c.cmd {
            Cjp2pCmd::Node(a) => cjp2p_node(a),
            Cjp2pCmd::Get(a) => cjp2p_get(a),
            Cjp2pCmd::Peers(a) => cjp2p_peers(a),
            Cjp2pCmd::List(a) => cjp2p_list(a),
        },
        Cmd::Index(a) => index(a),
        Cmd::Certs(a) => transport::write_test_certs(&a.out)
            .map(|_| {
                eprintln!("wrote a test CA and certificate into {}", a.out.display());
                EXIT_OK
            })
            .map_err(local),
    };
    match r {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("ferry: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn either<T>(a: Option<T>, b: Option<T>) -> Option<T> {
    a.or(b)
}

fn tls_source(
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

fn open_catalog(dir: &Path, verbose: bool) -> Result<Arc<CatalogHandle>, Failure> {
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

fn load_tls(
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
fn spawn_rescanner(
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

fn print_listening(proto: &str, addr: &str, json: bool) {
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
fn run_servers(
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
fn run_servers_with(
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

fn limits(max_connections: usize, io_timeout: u64) -> Limits {
    Limits {
        max_connections,
        io_timeout: Duration::from_secs(io_timeout.max(1)),
        ..Limits::default()
    }
}

fn serve(a: ServeArgs) -> Result<u8, Failure> {
    let dir = a.dir.unwrap_or_else(|| PathBuf::from("share"));
    let shutdown = Shutdown::new();
    server::install_signal_handlers(&shutdown).map_err(local)?;
    let cat = open_catalog(&dir, a.verbose)?;
    let watch = a.watch.map(|s| Duration::from_secs(s.max(1)));
    let cfg = JtpConfig {
        bind: a.jtp_bind.clone(),
        tls: tls_source(a.no_tls || a.plain, a.cert, a.key)?,
        watch_interval: watch,
        verbose: a.verbose,
        ..JtpConfig::default()
    };
    let limits = limits(a.max_connections, a.io_timeout);
    let tls = load_tls(&cfg.tls, &cat, ALPN_JTP)?;
    let jtp = Arc::new(JtpService::new(cat.clone(), cfg, limits.clone(), tls));
    let l = Listener::bind_tcp(&a.jtp_bind)
        .map_err(|e| local(format!("jtp: bind {}: {e}", a.jtp_bind)))?;
    let tej_cfg = TejConfig {
        bind: a.tej_bind.clone(),
        verbose: a.verbose,
        ..TejConfig::default()
    };
    let tej = Arc::new(TejService::new(cat.clone(), tej_cfg, None).map_err(local)?);
    let tl = Listener::bind_tcp(&a.tej_bind)
        .map_err(|e| local(format!("tej: bind {}: {e}", a.tej_bind)))?;
    let builder = ServerBuilder::new(
        limits.max_connections,
        limits.shutdown_grace,
        shutdown.clone(),
    )
    .listener(l, jtp)
    .listener(tl, tej);
    let peers = parse_peers(&a.peer)?;
    let node = start_node(
        &a.cjp2p_bind,
        peers,
        true,
        a.verbose,
        32768,
        cat.clone(),
        shutdown.clone(),
    )?;
    let extra = [("cjp2p".to_string(), node.local_addr.to_string())];
    let r = run_servers_with(builder, shutdown, cat, watch, a.verbose, a.json, &extra);
    drop(node);
    r
}

fn jtp_serve(a: JtpServeArgs) -> Result<u8, Failure> {
    let dir = either(a.images, a.images_dir).unwrap_or_else(|| PathBuf::from("images"));
    let threshold = either(a.compression_threshold, a.compress_threshold).unwrap_or(0.95);
    if !threshold.is_finite() {
        return Err(local("--compression-threshold must be a number"));
    }
    let watch = match (a.watch_interval, a.watch) {
        (Some(s), _) => Some(Duration::from_secs(s.max(1))),
        (None, true) => Some(Duration::from_secs(5)),
        _ => None,
    };
    let verbose = a.verbose;
    let shutdown = Shutdown::new();
    server::install_signal_handlers(&shutdown).map_err(local)?;
    let cat = open_catalog(&dir, verbose)?;
    let cfg = JtpConfig {
        bind: a.bind.clone(),
        tls: tls_source(a.no_tls || a.plain, a.cert, a.key)?,
        only: either(a.only, a.name_contains),
        compression_threshold: threshold.clamp(0.0, 1.0),
        rate_limit: a.rate_limit.filter(|n| *n > 0),
        rate_limit_window: Duration::from_secs(a.rate_limit_window.max(1)),
        watch_interval: watch,
        nodelay: !a.no_tcp_nodelay,
        verbose,
    };
    let mut limits = limits(a.max_connections, a.io_timeout);
    limits.keep_alive_timeout = Duration::from_secs(a.keep_alive_timeout);
    let tls = load_tls(&cfg.tls, &cat, ALPN_JTP)?;
    let jtp = Arc::new(JtpService::new(cat.clone(), cfg, limits.clone(), tls));
    let l = Listener::bind_tcp(&a.bind).map_err(|e| local(format!("jtp: bind {}: {e}", a.bind)))?;
    let builder = ServerBuilder::new(
        limits.max_connections,
        limits.shutdown_grace,
        shutdown.clone(),
    )
    .listener(l, jtp);
    run_servers(builder, shutdown, cat, watch, verbose, a.json)
}

fn client_options(
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

fn jtp_list(a: JtpListArgs) -> Result<u8, Failure> {
    let _ = a.tls;
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
    let list = Client::new(opts)?.list()?;
    let mut out = std::io::stdout().lock();
    if a.json {
        let _ = writeln!(out, "{}", serde_json::to_string(&list).unwrap_or_default());
    } else {
        for l in &list {
            let _ = writeln!(
                out,
                "{}  {}  {:>10}  {}",
                wire::id_hex(l.id),
                l.ftype,
                l.size,
                l.name
            );
        }
    }
    Ok(if list.is_empty() {
        EXIT_PARTIAL
    } else {
        EXIT_OK
    })
}

fn jtp_get(a: JtpGetArgs) -> Result<u8, Failure> {
    let _ = (a.tls, a.secure);
    let mut positional_addr = None;
    let mut ids = Vec::new();
    for s in &a.ids {
        if s.starts_with("jtp://") {
            positional_addr = Some(s.clone());
        } else {
            ids.push(
                wire::parse_id_hex(s)
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
    opts.progress = !a.json && std::io::stderr().is_terminal();
    let client = Client::new(opts)?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let s = stop.clone();
        let _ = ctrlc::set_handler(move || {
            if s.swap(true, Ordering::SeqCst) {
                std::process::exit(EXIT_INTERRUPTED as i32);
            }
        });
    }
    if a.watch {
        let json = a.json;
        client.watch(&stop, &mut |l| {
            let mut out = std::io::stdout().lock();
            if json {
                let _ = writeln!(out, "{}", serde_json::to_string(l).unwrap_or_default());
            } else {
                let _ = writeln!(
                    out,
                    "NEW  id={} type={} size={} name={}",
                    wire::id_hex(l.id),
                    l.ftype,
                    l.size,
                    l.name
                );
            }
            let _ = out.flush();
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
    let s = client.get(&out, wanted, mode, &stop)?;
    if a.json {
        println!("{}", serde_json::to_string(&s).unwrap_or_default());
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
                format!(", {} missing", s.missing.len())
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

fn index(a: IndexArgs) -> Result<u8, Failure> {
    let dir = a.dir.unwrap_or_else(|| PathBuf::from("share"));
    let cat = CatalogHandle::open(&dir, CatalogOptions::default()).map_err(local)?;
    let r = cat.last_report();
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "files": r.files, "hashed": r.hashed, "reused": r.reused,
                "skipped": r.skipped, "seconds": r.elapsed.as_secs_f64()
            })
        );
    } else {
        println!(
            "{} files: {} hashed, {} from the index, {} skipped, {:.3} s",
            r.files,
            r.hashed,
            r.reused,
            r.skipped,
            r.elapsed.as_secs_f64()
        );
    }
    Ok(EXIT_OK)
}

fn tej_serve(a: TejServeArgs) -> Result<u8, Failure> {
    let dir = a.root.unwrap_or_else(|| PathBuf::from("share"));
    let shutdown = Shutdown::new();
    server::install_signal_handlers(&shutdown).map_err(local)?;
    let cat = open_catalog(&dir, a.verbose)?;
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
        verbose: a.verbose,
        ..TejConfig::default()
    };
    let grace = Limits::default().shutdown_grace;
    let tej = Arc::new(TejService::new(cat.clone(), cfg, tls).map_err(local)?);
    let l = Listener::bind_tcp(&a.bind).map_err(|e| local(format!("tej: bind {}: {e}", a.bind)))?;
    let builder = ServerBuilder::new(a.max_connections, grace, shutdown.clone()).listener(l, tej);
    run_servers(builder, shutdown, cat, None, a.verbose, a.json)
}

impl From<tej_client::ClientError> for Failure {
    fn from(e: tej_client::ClientError) -> Self {
        use tej_client::ClientError as E;
        let code = match &e {
            E::Connect(_) | E::Io(_) => EXIT_NETWORK,
            E::Frame(_) | E::Peer(_) | E::Mismatch(_) => EXIT_PROTOCOL,
            E::Local(_) => EXIT_LOCAL,
        };
        Failure {
            code,
            message: format!("tej: {e}"),
        }
    }
}

fn tej_options(
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

fn tej_send(a: TejSendArgs) -> Result<u8, Failure> {
    if a.status > 127 {
        return Err(local(
            "--status must be 0..127 (the top bit is the frame marker)",
        ));
    }
    let mut opts = tej_options(a.addr, a.tls, a.cert, a.server_name, a.io_timeout);
    opts.ack_timeout = Duration::from_secs(a.ack_timeout);
    opts.verbose = a.verbose;
    let client = tej_client::Client::new(opts)?;
    let message = a.message.unwrap_or_default();
    let r = client.send(&a.files, message.as_bytes(), a.status)?;
    if a.json {
        println!("{}", serde_json::to_string(&r).unwrap_or_default());
    } else {
        eprintln!(
            "tej: {} files, {:.1} MB in {:.2} s ({:.1} MB/s): {}",
            r.files.len(),
            r.bytes as f64 / 1e6,
            r.seconds,
            r.bytes as f64 / 1e6 / r.seconds.max(1e-9),
            r.outcome
        );
        if r.outcome == "refused" || r.outcome == "mismatch" {
            if let Some(reply) = &r.reply {
                eprintln!("tej: reply: {reply}");
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

fn tej_get(a: TejGetArgs) -> Result<u8, Failure> {
    if a.items.is_empty() {
        return Err(local("name at least one file (name or SHA-256)"));
    }
    let opts = tej_options(a.addr, a.tls, a.cert, a.server_name, a.io_timeout);
    let stored = tej_client::Client::new(opts)?.get(&a.out, &a.items)?;
    if a.json {
        println!("{}", serde_json::to_string(&stored).unwrap_or_default());
    } else {
        for s in &stored {
            eprintln!("tej: {} ({} bytes, sha256 {})", s.name, s.size, s.sha256);
        }
    }
    Ok(EXIT_OK)
}

fn tej_list(a: TejListArgs) -> Result<u8, Failure> {
    let opts = tej_options(a.addr, a.tls, a.cert, a.server_name, a.io_timeout);
    let all = tej_client::Client::new(opts)?.list()?;
    let mut out = std::io::stdout().lock();
    if a.json {
        let _ = writeln!(out, "{}", serde_json::to_string(&all).unwrap_or_default());
    } else {
        for e in &all {
            let _ = writeln!(out, "{}  {:>12}  {}", e.sha256, e.size, e.name);
        }
    }
    Ok(if all.is_empty() {
        EXIT_PARTIAL
    } else {
        EXIT_OK
    })
}

fn parse_peers(list: &[String]) -> Result<Vec<std::net::SocketAddr>, Failure> {
    list.iter()
        .map(|p| {
            p.parse().map_err(|_| {
                local(format!(
                    "--peer {p:?}: expected ip:port ([v6]:port for IPv6)"
                ))
            })
        })
        .collect()
}

/// Starts a CJP2P node on `bind` (a `[::]` address falls back to `0.0.0.0`).
fn start_node(
    bind: &str,
    peers: Vec<std::net::SocketAddr>,
    discovery: bool,
    verbose: bool,
    block_size: u32,
    cat: Arc<CatalogHandle>,
    shutdown: Shutdown,
) -> Result<NodeHandle, Failure> {
    let mut cfg = DriverConfig {
        bind: bind.to_string(),
        peers,
        node: Default::default(),
        download: Default::default(),
        verbose,
    };
    cfg.node.discovery = discovery;
    cfg.download.ferry_block = block_size;
    match NodeHandle::start(cfg.clone(), cat.clone(), shutdown.clone()) {
        Ok(h) => Ok(h),
        Err(e) if bind.starts_with("[::]") => {
            cfg.bind = bind.replacen("[::]", "0.0.0.0", 1);
            NodeHandle::start(cfg, cat, shutdown).map_err(|e2| {
                local(format!(
                    "cjp2p: bind {bind}: {e}; {}: {e2}",
                    bind.replacen("[::]", "0.0.0.0", 1)
                ))
            })
        }
        Err(e) => Err(local(format!("cjp2p: bind {bind}: {e}"))),
    }
}

fn cjp2p_node(a: Cjp2pNodeArgs) -> Result<u8, Failure> {
    let dir = a.root.unwrap_or_else(|| PathBuf::from("share"));
    let bind = a
        .bind
        .unwrap_or_else(|| format!("[::]:{}", cjp2p::DEFAULT_PORT));
    let shutdown = Shutdown::new();
    server::install_signal_handlers(&shutdown).map_err(local)?;
    let cat = open_catalog(&dir, a.verbose)?;
    let peers = parse_peers(&a.peer)?;
    let node = start_node(
        &bind,
        peers,
        !a.no_discovery,
        a.verbose,
        32768,
        cat.clone(),
        shutdown.clone(),
    )?;
    print_listening("cjp2p", &node.local_addr.to_string(), a.json);
    let rescanner = spawn_rescanner(cat, None, shutdown.clone(), a.verbose);
    while !shutdown.is_triggered() {
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(node);
    let _ = rescanner.join();
    Ok(EXIT_OK)
}

/// A client-side node: catalog in `dir`, any local port.
fn client_node(
    dir: &Path,
    bind: Option<String>,
    peers: Vec<std::net::SocketAddr>,
    verbose: bool,
    block_size: u32,
) -> Result<(NodeHandle, Shutdown), Failure> {
    let cat = CatalogHandle::open(dir, CatalogOptions { verbose }).map_err(local)?;
    let shutdown = Shutdown::new();
    let bind = bind.unwrap_or_else(|| "[::]:0".to_string());
    let node = start_node(
        &bind,
        peers,
        false,
        verbose,
        block_size,
        cat,
        shutdown.clone(),
    )?;
    Ok((node, shutdown))
}

fn cjp2p_get(a: Cjp2pGetArgs) -> Result<u8, Failure> {
    let id = cjp2p::parse_id(&a.id).ok_or_else(|| {
        local(format!(
            "not a SHA-256 id (64 lowercase hex digits): {:?}",
            a.id
        ))
    })?;
    let peers = parse_peers(&a.peer)?;
    if peers.is_empty() {
        return Err(local("name at least one --peer ip:port"));
    }
    let name = match &a.name {
        Some(n) => ferry::names::sanitize_basename(n, 255)
            .ok_or_else(|| local(format!("--name {n:?} is not a safe file name")))?,
        None => a.id.clone(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let s = stop.clone();
        let _ = ctrlc::set_handler(move || {
            if s.swap(true, Ordering::SeqCst) {
                std::process::exit(EXIT_INTERRUPTED as i32);
            }
        });
    }
    if a.block_size == 0 || a.block_size % 4096 != 0 || a.block_size > 40960 {
        return Err(local(
            "--block-size must be a multiple of 4096 from 4096 to 40960",
        ));
    }
    let (node, _shutdown) = client_node(&a.out, a.bind, peers.clone(), a.verbose, a.block_size)?;
    let started = std::time::Instant::now();
    if a.block_list {
        let file_id = match &a.file_id {
            Some(f) => Some(
                cjp2p::parse_id(f)
                    .ok_or_else(|| local(format!("--file-id {f:?} is not a SHA-256 id")))?,
            ),
            None => None,
        };
        let r = blocklist::fetch(&node, id, file_id, &peers, &a.out, a.name.clone(), &stop);
        let secs = started.elapsed().as_secs_f64();
        drop(node);
        return match r {
            Ok(f) => {
                if a.json {
                    println!(
                        "{}",
                        serde_json::json!({"id": cjp2p::hex(&f.sha256), "list": a.id, "blocks": f.blocks, "path": f.path, "size": f.size, "seconds": secs, "verified": true})
                    );
                } else {
                    eprintln!(
                        "cjp2p: {} blocks assembled and verified, {:.1} MB in {:.2} s: {} (sha256 {})",
                        f.blocks,
                        f.size as f64 / 1e6,
                        secs,
                        f.path.display(),
                        cjp2p::hex(&f.sha256)
                    );
                }
                Ok(EXIT_OK)
            }
            Err(why) if stop.load(Ordering::SeqCst) => {
                eprintln!("cjp2p: {why}; rerun the same command to resume");
                Ok(EXIT_INTERRUPTED)
            }
            Err(why) => Err(Failure {
                code: EXIT_PARTIAL,
                message: format!("cjp2p: block list {}: {why}", a.id),
            }),
        };
    }
    let done = node.download(id, peers, name);
    let progress = !a.json && std::io::stderr().is_terminal();
    let mut last_bytes = 0u64;
    let mut last_change = std::time::Instant::now();
    let outcome = loop {
        match done.recv_timeout(Duration::from_millis(200)) {
            Ok(o) => break o,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                break Outcome::Failed("node stopped".into())
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if stop.load(Ordering::SeqCst) {
            eprintln!("cjp2p: interrupted; rerun the same command to resume");
            drop(node);
            return Ok(EXIT_INTERRUPTED);
        }
        let p = node.progress();
        let got = p.first().map_or(0, |p| p.received);
        if got != last_bytes {
            last_bytes = got;
            last_change = std::time::Instant::now();
        } else if last_change.elapsed() > Duration::from_secs(a.timeout.max(1)) {
            break Outcome::Failed(format!("no progress for {} s", a.timeout));
        }
        if progress {
            if let Some(p) = p.first() {
                let eof = p.eof.unwrap_or(0);
                eprint!(
                    "\r\x1b[K{:.1} / {:.1} MB from {} sources, {:.1} MB/s",
                    p.received as f64 / 1e6,
                    eof as f64 / 1e6,
                    p.sources,
                    p.received as f64 / 1e6 / started.elapsed().as_secs_f64().max(1e-3)
                );
            }
        }
    };
    if progress {
        eprint!("\r\x1b[K");
    }
    let secs = started.elapsed().as_secs_f64();
    drop(node);
    match outcome {
        Outcome::Done { path, size } => {
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({"id": a.id, "path": path, "size": size, "seconds": secs, "verified": true})
                );
            } else {
                eprintln!(
                    "cjp2p: {} verified, {:.1} MB in {:.2} s ({:.1} MB/s): {}",
                    a.id,
                    size as f64 / 1e6,
                    secs,
                    size as f64 / 1e6 / secs.max(1e-9),
                    path.display()
                );
            }
            Ok(EXIT_OK)
        }
        Outcome::Failed(why) => {
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({"id": a.id, "error": why, "seconds": secs, "verified": false})
                );
            }
            Err(Failure {
                code: EXIT_PARTIAL,
                message: format!("cjp2p: {}: {why}", a.id),
            })
        }
    }
}

fn cjp2p_peers(a: Cjp2pPeersArgs) -> Result<u8, Failure> {
    let peer = parse_peers(std::slice::from_ref(&a.peer))?[0];
    let tmp = std::env::temp_dir().join(format!("ferry-cjp2p-{}", std::process::id()));
    let (node, _sd) = client_node(&tmp, None, vec![peer], false, 32768)?;
    let peers = node
        .peers_of(peer)
        .recv_timeout(Duration::from_secs(6))
        .unwrap_or_default();
    drop(node);
    let _ = std::fs::remove_dir_all(&tmp);
    if a.json {
        println!(
            "{}",
            serde_json::to_string(&peers.iter().map(|p| p.to_string()).collect::<Vec<_>>())
                .unwrap_or_default()
        );
    } else {
        for p in &peers {
            println!("{p}");
        }
    }
    Ok(if peers.is_empty() {
        EXIT_PARTIAL
    } else {
        EXIT_OK
    })
}

fn cjp2p_list(a: Cjp2pListArgs) -> Result<u8, Failure> {
    let peer = parse_peers(std::slice::from_ref(&a.peer))?[0];
    let tmp = std::env::temp_dir().join(format!("ferry-cjp2p-{}", std::process::id()));
    let (node, _sd) = client_node(&tmp, None, vec![peer], false, 32768)?;
    let list = node
        .list_of(peer)
        .recv_timeout(Duration::from_secs(6))
        .unwrap_or_default();
    drop(node);
    let _ = std::fs::remove_dir_all(&tmp);
    if a.json {
        let v: Vec<_> = list
            .iter()
            .map(|(id, size)| serde_json::json!([cjp2p::hex(id), size]))
            .collect();
        println!("{}", serde_json::Value::Array(v));
    } else {
        for (id, size) in &list {
            println!("{}  {size:>12}", cjp2p::hex(id));
        }
    }
    Ok(if list.is_empty() {
        EXIT_PARTIAL
    } else {
        EXIT_OK
    })
}
