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
    /// most concurrent connections per listener (JTP and TEJ each; default 1024)
    #[argh(option, default = "1024")]
    max_connections: usize,
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
    let tls = load_tls(&cfg.tls, &cat, ALPN_JTP)?;
    let jtp = Arc::new(JtpService::new(cat.clone(), cfg, limits.clone()));
    let l = bind(
        "jtp",
        &a.jtp_bind,
        tcp_listener(&a.jtp_bind, tls, &limits, a.verbose),
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
        tcp_listener(&a.tej_bind, None, &limits, a.verbose),
    )?;
    let builder = ServerBuilder::new(limits.shutdown_grace, shutdown.clone())
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
    let r = run_servers_with(builder, shutdown, cat, watcher, a.verbose, a.json, &extra);
    drop(node);
    r
}
