//! `ferry cjp2p node | get | peers | list`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use argh::FromArgs;

use ferry::catalog::CatalogHandle;
use ferry::driver::cjp2p::blocklist::{self, FetchError};
use ferry::driver::cjp2p::node::{self as cjp2p_driver, DriverConfig, NodeHandle, Outcome, Role};
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
    /// peer to contact, ip:port (repeatable); other addresses are contacted only when these
    /// advertise them
    #[argh(option)]
    peer: Vec<String>,
    /// contact no address but the --peer ones and the senders it answers (no addresses from
    /// peer lists, no probes of peers that contacted it)
    #[argh(switch)]
    no_discovery: bool,
    /// also rescan the whole folder every SECONDS (polling fallback where inotify sees
    /// nothing); the folder is followed live by default, SIGHUP rescans
    #[argh(option)]
    watch_interval: Option<u64>,
    /// alias of --watch-interval
    #[argh(option)]
    watch: Option<u64>,
    /// do not follow the folder live (no inotify)
    #[argh(switch)]
    no_follow: bool,
    /// log on stderr: what is served and refused to whom, and the counters, every 2 s
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
    /// file name for the result, a plain name with no folder (default: the id)
    #[argh(option)]
    name: Option<String>,
    /// local UDP address (default: an ephemeral port on the address that reaches the peers)
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
    /// largest request size toward ferry peers (it adapts per source from 4096), a multiple of
    /// 4096 up to 40960 (default 32768; 4096 requests as the reference node does)
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
    /// seconds to wait for the answer (default 5)
    #[argh(option, default = "5")]
    timeout: u64,
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
    /// seconds to wait for the answer (default 5)
    #[argh(option, default = "5")]
    timeout: u64,
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

/// Starts a serving CJP2P node on `bind` (a `[::]` address falls back to `0.0.0.0`).
pub(crate) fn start_node(
    bind: &str,
    peers: Vec<std::net::SocketAddr>,
    discovery: bool,
    verbose: bool,
    block_size: u32,
    cat: Arc<CatalogHandle>,
    shutdown: Shutdown,
) -> Result<NodeHandle, Failure> {
    let cfg = driver_config(bind, peers, discovery, verbose, block_size);
    start_role(cfg, Role::Serve(cat), shutdown)
}

fn driver_config(
    bind: &str,
    peers: Vec<std::net::SocketAddr>,
    discovery: bool,
    verbose: bool,
    block_size: u32,
) -> DriverConfig {
    let mut cfg = DriverConfig {
        bind: bind.to_string(),
        peers,
        node: Default::default(),
        download: Default::default(),
        verbose,
    };
    cfg.node.discovery = discovery;
    cfg.download.ferry_block = block_size;
    cfg
}

fn start_role(
    mut cfg: DriverConfig,
    role: Role,
    shutdown: Shutdown,
) -> Result<NodeHandle, Failure> {
    let bind = cfg.bind.clone();
    match NodeHandle::start(cfg.clone(), role.clone(), shutdown.clone()) {
        Ok(h) => Ok(h),
        Err(e) if bind.starts_with("[::]") => {
            cfg.bind = bind.replacen("[::]", "0.0.0.0", 1);
            NodeHandle::start(cfg, role, shutdown).map_err(|e2| {
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
    report_as_json(a.json);
    let follow = Follow::new(a.no_follow, either(a.watch_interval, a.watch));
    let (cat, watcher) = open_catalog(&dir, a.verbose, follow)?;
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

/// A client node (`get`, `list`, `peers`): serves nothing, opens no catalog, binds an ephemeral
/// port on the address that reaches `peers` unless told otherwise. Downloads go to `out`.
pub(crate) fn client_node(
    out: Option<&Path>,
    bind: Option<String>,
    peers: Vec<std::net::SocketAddr>,
    verbose: bool,
    block_size: u32,
) -> Result<(NodeHandle, Shutdown), Failure> {
    let shutdown = Shutdown::new();
    let bind = bind.unwrap_or_else(|| cjp2p_driver::client_bind(&peers).to_string());
    let cfg = driver_config(&bind, peers, false, verbose, block_size);
    let role = Role::Client {
        out: out.map(Path::to_path_buf),
    };
    let node = start_role(cfg, role, shutdown.clone())?;
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
    // A name is used as given or refused: `../evil.bin` must not quietly become `evil.bin`.
    let name = match &a.name {
        Some(n) if ferry::names::sanitize_basename(n, 255).as_deref() == Some(n.as_str()) => {
            n.clone()
        }
        Some(n) => {
            return Err(local(format!(
                "--name {n:?} is not a plain file name (no folder, no leading dot, no control \
                 character, at most 255 bytes)"
            )))
        }
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
    let started = std::time::Instant::now();
    if !a.block_list {
        if let Some((path, size, how)) = from_output_folder(&a.out, &id, &name)? {
            let secs = started.elapsed().as_secs_f64();
            if a.json {
                out!(
                    "{}",
                    serde_json::json!({"id": a.id, "path": path, "size": size, "seconds": secs, "verified": true, "local": how})
                );
            } else {
                eprintln!("cjp2p: {} {how}: {}", a.id, path.display());
            }
            return Ok(EXIT_OK);
        }
    }
    let (node, _shutdown) =
        client_node(Some(&a.out), a.bind, peers.clone(), a.verbose, a.block_size)?;
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
                    out!(
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
            Err(FetchError::Local(why)) => Err(local(format!(
                "cjp2p: block list {}: {why}; rerun the same command to resume once fixed",
                a.id
            ))),
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
                out!(
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
                out!(
                    "{}",
                    serde_json::json!({"id": a.id, "error": why, "seconds": secs, "verified": false})
                );
            }
            Err(Failure {
                code: EXIT_PARTIAL,
                message: format!("cjp2p: {}: {why}", a.id),
            })
        }
        Outcome::LocalError(why) => {
            if a.json {
                out!(
                    "{}",
                    serde_json::json!({"id": a.id, "error": why, "seconds": secs, "verified": false})
                );
            }
            Err(local(format!(
                "cjp2p: {}: {why}; the partial data is kept: rerun the same command once fixed",
                a.id
            )))
        }
    }
}

/// The content may already be in the output folder: under the name asked for (nothing to do),
/// or, when another name is asked, under its id from an earlier run (then it is copied to that
/// name through ingest, verified, with no network). Anything else is downloaded. Returns the
/// path, the size and what was done.
fn from_output_folder(
    out: &Path,
    id: &[u8; 32],
    name: &str,
) -> Result<Option<(PathBuf, u64, &'static str)>, Failure> {
    use ferry::ingest::{Expect, IngestDir};
    use sha2::{Digest, Sha256};
    let holds = |path: &Path| -> Option<u64> {
        // Regular files only; a symlink or anything else is never read. The type is checked
        // on the opened descriptor (O_NOFOLLOW | O_NONBLOCK): a link or FIFO swapped in after
        // a look by name is neither followed nor waited on.
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .ok()?;
        let meta = f.metadata().ok()?;
        if !meta.file_type().is_file() {
            return None;
        }
        let mut h = Sha256::new();
        std::io::copy(&mut f, &mut h).ok()?;
        (<[u8; 32]>::from(h.finalize()) == *id).then_some(meta.len())
    };
    let target = out.join(name);
    if let Some(size) = holds(&target) {
        return Ok(Some((target, size, "already present")));
    }
    let by_id = out.join(cjp2p_driver::hex(id));
    if by_id == target || holds(&by_id).is_none() {
        return Ok(None);
    }
    let work = out.join(".ferry").join("ingest").join("cjp2p");
    let ingest =
        IngestDir::new(out, &work).map_err(|e| local(format!("{}: {e}", out.display())))?;
    let copy = || -> Result<ferry::ingest::Committed, String> {
        let mut src = std::fs::File::open(&by_id).map_err(|e| e.to_string())?;
        let size = src.metadata().map_err(|e| e.to_string())?.len();
        let mut sink = ingest.begin_stream(Some(size)).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = std::io::Read::read(&mut src, &mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            sink.write_all(&buf[..n]).map_err(|e| e.to_string())?;
        }
        sink.commit(name, Expect::Sha256(*id))
            .map_err(|e| e.to_string())
    };
    match copy() {
        Ok(c) => Ok(Some((
            c.path,
            c.size,
            "copied from the earlier download under its id",
        ))),
        // It changed under us: fetch it from the network instead.
        Err(_) => Ok(None),
    }
}

/// The answer of `peer` to a peers or list request, or the "no answer" failure (exit 3).
fn answer_of<T>(
    peer: std::net::SocketAddr,
    timeout: u64,
    ask: impl FnOnce(&NodeHandle, Duration) -> std::sync::mpsc::Receiver<Option<T>>,
) -> Result<T, Failure> {
    let limit = Duration::from_secs(timeout.max(1));
    let (node, _sd) = client_node(None, None, vec![peer], false, 32768)?;
    let answer = ask(&node, limit)
        .recv_timeout(limit + Duration::from_secs(1))
        .ok()
        .flatten();
    drop(node);
    answer.ok_or_else(|| Failure {
        code: EXIT_NETWORK,
        message: format!("cjp2p: no answer from {peer} within {} s", limit.as_secs()),
    })
}

pub(crate) fn cjp2p_peers(a: Cjp2pPeersArgs) -> Result<u8, Failure> {
    let peer = parse_peers(std::slice::from_ref(&a.peer))?[0];
    let peers = answer_of(peer, a.timeout, |n, limit| n.peers_of(peer, limit))?;
    if a.json {
        out!(
            "{}",
            serde_json::to_string(&peers.iter().map(|p| p.to_string()).collect::<Vec<_>>())
                .unwrap_or_default()
        );
    } else {
        for p in &peers {
            out!("{p}");
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
    let list = answer_of(peer, a.timeout, |n, limit| n.list_of(peer, limit))?;
    if a.json {
        let v: Vec<_> = list
            .iter()
            .map(|(id, size)| serde_json::json!([cjp2p_driver::hex(id), size]))
            .collect();
        out!("{}", serde_json::Value::Array(v));
    } else {
        for (id, size) in &list {
            out!("{}  {size:>12}", cjp2p_driver::hex(id));
        }
    }
    Ok(if list.is_empty() {
        EXIT_PARTIAL
    } else {
        EXIT_OK
    })
}
