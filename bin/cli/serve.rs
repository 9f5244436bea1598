//! `ferry serve`: every implemented protocol over one catalog.

use std::path::PathBuf;
use std::sync::Arc;

use argh::FromArgs;

use ferry::config::JtpConfig;
use ferry::driver::jtp::server::JtpService;
use ferry::driver::tej::server::{TejConfig, TejService};
use ferry::proto::jtp::ALPN as ALPN_JTP;
use ferry::server::{self, ServerBuilder, Shutdown};

use super::cjp2p::{parse_peers, start_node};
use super::*;

#[derive(FromArgs)]
/// Serve a folder on every implemented protocol (loopback by default), one shared catalog.
#[argh(subcommand, name = "serve")]
pub(crate) struct ServeArgs {
    /// folder to serve (default ./share, created if missing)
    #[argh(positional)]
    dir: Option<PathBuf>,
    /// JTP listen address (default 127.0.0.1:8443)
    #[argh(option, default = "String::from(\"127.0.0.1:8443\")")]
    jtp_bind: String,
    /// TEJ listen address (default 127.0.0.1:8000, plain TCP as tej-protoc speaks it)
    #[argh(option, default = "String::from(\"127.0.0.1:8000\")")]
    tej_bind: String,
    /// fastDP listen address (default 127.0.0.1:5423; off to disable)
    #[argh(option, default = "String::from(\"127.0.0.1:5423\")")]
    fastdp_bind: String,
    /// CJP2P UDP address (default 127.0.0.1:24254)
    #[argh(option, default = "String::from(\"127.0.0.1:24254\")")]
    cjp2p_bind: String,
    /// filestorage TCP address, tcpd preamble first (default 127.0.0.1:9000; `off`)
    #[argh(
        option,
        default = "String::from(ferry::driver::filestorage::DEFAULT_BIND)"
    )]
    filestorage_bind: String,
    /// filestorage Unix socket (default $RUNDIR/filestorage, else /tmp/.libipc-run/filestorage;
    /// `off`)
    #[argh(option)]
    filestorage_unix: Option<String>,
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
    /// also rescan the whole folder every SECONDS: the polling fallback where inotify sees
    /// nothing (network file systems); the folder is followed live by default, SIGHUP rescans
    #[argh(option)]
    watch_interval: Option<u64>,
    /// alias of --watch-interval
    #[argh(option)]
    watch: Option<u64>,
    /// do not follow the folder (no inotify, no JTP WATCH): serve what the start-up scan found,
    /// until SIGHUP or --watch rescans
    #[argh(switch)]
    no_follow: bool,
    /// most concurrent connections per listener (JTP, TEJ and FastDP each, filestorage's
    /// endpoints together; default: what the open-file limit allows, at most 1024; see the
    /// README)
    #[argh(option, default = "default_max_connections(4)")]
    max_connections: usize,
    /// most concurrent connections from one IP address per listener (default a quarter of
    /// --max-connections)
    #[argh(option)]
    max_per_ip: Option<usize>,
    /// seconds without read/write progress before a connection is dropped, on every listener
    /// (default 30)
    #[argh(option, default = "30")]
    io_timeout: u64,
    /// log connections and errors on stderr
    #[argh(switch, short = 'v')]
    verbose: bool,
    /// print listening lines (stdout) and the start-up report (stderr) as JSON objects
    #[argh(switch)]
    json: bool,
}

pub(crate) fn run(a: ServeArgs) -> Result<u8, Failure> {
    let dir = a.dir.unwrap_or_else(|| PathBuf::from("share"));
    let shutdown = Shutdown::new();
    server::install_signal_handlers(&shutdown).map_err(local)?;
    let follow = Follow::new(a.no_follow, either(a.watch_interval, a.watch));
    report_as_json(a.json);
    let (cat, watcher) = open_catalog(&dir, a.verbose, follow)?;
    let cfg = JtpConfig {
        bind: a.jtp_bind.clone(),
        tls: tls_source(a.no_tls || a.plain, a.cert, a.key)?,
        watch_interval: follow.jtp_watch(),
        verbose: a.verbose,
        ..JtpConfig::default()
    };
    let limits = limits(a.max_connections, a.io_timeout);
    let per_ip = super::tej::max_per_ip(a.max_per_ip, a.max_connections);
    let tls = load_tls(&cfg.tls, &cat, ALPN_JTP)?;
    let jtp = Arc::new(JtpService::new(cat.clone(), cfg, limits.clone()));
    let l = bind(
        "jtp",
        &a.jtp_bind,
        tcp_listener(&a.jtp_bind, tls, &limits, a.verbose).max_per_ip(per_ip),
    )?;
    let tej_cfg = TejConfig {
        bind: a.tej_bind.clone(),
        verbose: a.verbose,
        ..TejConfig::default()
    };
    let tej = Arc::new(TejService::new(cat.clone(), tej_cfg).map_err(local)?);
    // Each listener has its own --max-connections budget; --io-timeout reaches both.
    let tl = bind(
        "tej",
        &a.tej_bind,
        tcp_listener(&a.tej_bind, None, &limits, a.verbose).max_per_ip(per_ip),
    )?;
    let mut builder = ServerBuilder::new(limits.shutdown_grace, shutdown.clone())
        .listener(l, jtp)
        .listener(tl, tej);
    if a.fastdp_bind != "off" {
        let cfg = ferry::driver::fastdp::server::FastdpConfig {
            verbose: a.verbose,
            ..Default::default()
        };
        let fl = tcp_listener(&a.fastdp_bind, None, &limits, a.verbose).max_per_ip(per_ip);
        let svc = super::fastdp::service(cat.clone(), cfg)?;
        builder = builder.listener(bind("fastdp", &a.fastdp_bind, fl)?, svc);
    }
    let mut fs_endpoints = super::filestorage::Endpoints::defaults(a.verbose);
    (fs_endpoints.max_connections, fs_endpoints.io_timeout) =
        (a.max_connections, limits.io_timeout);
    fs_endpoints.max_per_ip = per_ip;
    fs_endpoints.tcp = Some(a.filestorage_bind.clone()).filter(|b| b != "off");
    match a.filestorage_unix.as_deref() {
        Some("off") => fs_endpoints.unix = None,
        Some(p) => fs_endpoints.unix = Some(PathBuf::from(p)),
        None => {}
    }
    let mut _filestorage = None;
    if fs_endpoints.tcp.is_some() || fs_endpoints.unix.is_some() {
        let (b, running) = super::filestorage::endpoints(&fs_endpoints, &cat)?.add_to(builder);
        (builder, _filestorage) = (b, Some(running));
    }
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
    let r = run_servers_with(builder, shutdown, cat, watcher, a.verbose, a.json, &extra);
    drop(node);
    r
}
