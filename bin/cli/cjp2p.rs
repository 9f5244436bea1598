//! `ferry cjp2p node | get | peers | list`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use argh::FromArgs;

use ferry::catalog::{CatalogHandle, CatalogOptions};
use ferry::driver::cjp2p::blocklist;
use ferry::driver::cjp2p::node::{self as cjp2p_driver, DriverConfig, NodeHandle, Outcome};
use ferry::server::{self, Shutdown};

use super::*;

#[derive(FromArgs)]
/// CJP2P: connectionless JSON peer-to-peer over UDP, content by SHA-256.
#[argh(subcommand, name = "cjp2p")]
pub(crate) struct Cjp2pArgs {
    #[argh(subcommand)]
    cmd: Cjp2pCmd,
}

#[derive(FromArgs)]
#[argh(subcommand)]
pub(crate) enum Cjp2pCmd {
    Node(Cjp2pNodeArgs),
    Get(Cjp2pGetArgs),
    Peers(Cjp2pPeersArgs),
    List(Cjp2pListArgs),
}

#[derive(FromArgs)]
/// Run a node: serve a folder under SHA-256 ids and answer peers.
#[argh(subcommand, name = "node")]
pub(crate) struct Cjp2pNodeArgs {
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
    /// also rescan the whole folder every SECONDS (polling fallback where inotify sees
    /// nothing); the folder is followed live by default, SIGHUP rescans
    #[argh(option)]
    watch: Option<u64>,
    /// do not follow the folder live (no inotify)
    #[argh(switch)]
    no_follow: bool,
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
pub(crate) struct Cjp2pGetArgs {
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
pub(crate) struct Cjp2pPeersArgs {
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
pub(crate) struct Cjp2pListArgs {
    /// the peer, ip:port
    #[argh(option)]
    peer: String,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

pub(crate) fn parse_peers(list: &[String]) -> Result<Vec<std::net::SocketAddr>, Failure> {
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
pub(crate) fn start_node(
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

pub(crate) fn run(args: Cjp2pArgs) -> Result<u8, Failure> {
    match args.cmd {
        Cjp2pCmd::Node(a) => cjp2p_node(a),
        Cjp2pCmd::Get(a) => cjp2p_get(a),
        Cjp2pCmd::Peers(a) => cjp2p_peers(a),
        Cjp2pCmd::List(a) => cjp2p_list(a),
    }
}

fn cjp2p_node(a: Cjp2pNodeArgs) -> Result<u8, Failure> {
    let dir = a.root.unwrap_or_else(|| PathBuf::from("share"));
    let bind = a
        .bind
        .unwrap_or_else(|| format!("[::]:{}", cjp2p_driver::DEFAULT_PORT));
    let shutdown = Shutdown::new();
    server::install_signal_handlers(&shutdown).map_err(local)?;
    let (cat, watcher) = open_catalog(&dir, a.verbose, Follow::new(a.no_follow, a.watch))?;
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
    let rescanner = spawn_rescanner(cat, watcher, shutdown.clone(), a.verbose);
    while !shutdown.is_triggered() {
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(node);
    let _ = rescanner.join();
    Ok(EXIT_OK)
}

/// A client-side node: catalog in `dir`, any local port.
pub(crate) fn client_node(
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

pub(crate) fn cjp2p_get(a: Cjp2pGetArgs) -> Result<u8, Failure> {
    let id = cjp2p_driver::parse_id(&a.id).ok_or_else(|| {
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
                cjp2p_driver::parse_id(f)
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
                        serde_json::json!({"id": cjp2p_driver::hex(&f.sha256), "list": a.id, "blocks": f.blocks, "path": f.path, "size": f.size, "seconds": secs, "verified": true})
                    );
                } else {
                    eprintln!(
                        "cjp2p: {} blocks assembled and verified, {:.1} MB in {:.2} s: {} (sha256 {})",
                        f.blocks,
                        f.size as f64 / 1e6,
                        secs,
                        f.path.display(),
                        cjp2p_driver::hex(&f.sha256)
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

pub(crate) fn cjp2p_peers(a: Cjp2pPeersArgs) -> Result<u8, Failure> {
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

pub(crate) fn cjp2p_list(a: Cjp2pListArgs) -> Result<u8, Failure> {
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
            .map(|(id, size)| serde_json::json!([cjp2p_driver::hex(id), size]))
            .collect();
        println!("{}", serde_json::Value::Array(v));
    } else {
        for (id, size) in &list {
            println!("{}  {size:>12}", cjp2p_driver::hex(id));
        }
    }
    Ok(if list.is_empty() {
        EXIT_PARTIAL
    } else {
        EXIT_OK
    })
}
