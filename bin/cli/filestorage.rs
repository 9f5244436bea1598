//! `ferry filestorage serve | token | put | query | fetch | rm`, and the filestorage endpoints
//! `ferry serve` adds ([`endpoints`]).

use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use argh::FromArgs;

use ferry::catalog::CatalogHandle;
use ferry::config::TlsSource;
use ferry::dir::Dir;
use ferry::driver::filestorage::client::{self as fs_client, ClientError, ClientOptions, Endpoint};
use ferry::driver::filestorage::store::Sweeper;
use ferry::driver::filestorage::{
    self as fs, FilestorageService, Store, StoreError, StoreOptions, DEFAULT_BIND, DEFAULT_SERVICE,
    PREAMBLE_OK,
};
use ferry::proto::filestorage::ids::Uuid;
use ferry::proto::filestorage::server::ServerConfig;
use ferry::proto::filestorage::store::quota::QuotaConfig;
use ferry::proto::filestorage::token;
use ferry::proto::filestorage::Limits as FsLimits;
use ferry::server::{
    self, ConnectionBudget, Listener, ListenerConfig, ServerBuilder, Service, Shutdown,
};
use ferry::transport::{TlsClient, TlsServer};

use super::*;

#[derive(FromArgs)]
/// filestorage: JWT-authenticated, resumable, tagged uploads over libIPC framing.
#[argh(subcommand, name = "filestorage")]
pub(crate) struct FilestorageArgs {
    #[argh(subcommand)]
    cmd: FsCmd,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum FsCmd {
    Serve(ServeArgs),
    Token(TokenArgs),
    Put(PutArgs),
    Query(QueryArgs),
    Fetch(FetchArgs),
    Rm(RmArgs),
}

#[derive(FromArgs)]
/// Serve the store on a Unix socket (libIPC naming), TCP with the tcpd preamble, and TLS.
#[argh(subcommand, name = "serve")]
struct ServeArgs {
    /// served folder; the store is DIR/.ferry/filestorage (default ./share, created if missing)
    #[argh(option)]
    root: Option<PathBuf>,
    /// service name: the Unix socket's name and the TCP preamble (default filestorage)
    #[argh(option, default = "String::from(DEFAULT_SERVICE)")]
    service: String,
    /// folder of the Unix socket (default $RUNDIR, else /tmp/.libipc-run)
    #[argh(option)]
    rundir: Option<PathBuf>,
    /// plain TCP listen address, tcpd preamble first (default 127.0.0.1:9000)
    #[argh(option, default = "String::from(DEFAULT_BIND)")]
    bind: String,
    /// TLS 1.3 listen address, e.g. 127.0.0.1:9443 (default off)
    #[argh(option)]
    tls_bind: Option<String>,
    /// TLS certificate chain (PEM); default generated into ROOT/.ferry/tls/
    #[argh(option)]
    cert: Option<PathBuf>,
    /// TLS private key (PEM)
    #[argh(option)]
    key: Option<PathBuf>,
    /// the HS256 key file (one trailing newline ignored); default ROOT/.ferry/filestorage/jwt.key,
    /// generated on first start
    #[argh(option)]
    jwt_key_file: Option<PathBuf>,
    /// per-uid quotas: {"default":{...},"uids":{"1002":{...}}}
    #[argh(option)]
    quota_file: Option<PathBuf>,
    /// bytes kept free on the folder's file system, counting what unfinished uploads of every
    /// protocol were promised (default 64 MiB)
    #[argh(option, default = "64 << 20")]
    disk_reserve: u64,
    /// also accept the legacy C libIPC frame (T, LEN, UTYPE, JSON)
    #[argh(switch)]
    legacy_ipc: bool,
    /// no Unix socket
    #[argh(switch)]
    no_unix: bool,
    /// no plain TCP listener
    #[argh(switch)]
    no_tcp: bool,
    /// allow plain TCP on a non-loopback address (the JWT is a bearer token)
    #[argh(switch)]
    plain_remote: bool,
    /// most connections over all endpoints together (default: what the open-file limit
    /// allows, at most 1024)
    #[argh(option, default = "default_max_connections(1)")]
    max_connections: usize,
    /// most concurrent TCP and TLS connections from one IP address (default a quarter of
    /// --max-connections)
    #[argh(option)]
    max_per_ip: Option<usize>,
    /// seconds a frame may take once started, and a write without progress (default 30)
    #[argh(option, default = "30")]
    io_timeout: u64,
    /// seconds of silence allowed between frames (default 300)
    #[argh(option, default = "300")]
    idle_timeout: u64,
    /// seconds for the TCP service name (and the TLS handshake) (default 10)
    #[argh(option, default = "10")]
    preamble_timeout: u64,
    /// TRANSFERs a client may leave unanswered, 1..64 (default 32)
    #[argh(option, default = "32")]
    window: u32,
    /// seconds a partial transfer may stay untouched before it is deleted (default 86400)
    #[argh(option, default = "86400")]
    retention: u64,
    /// seconds between retention sweeps (default 600; one also runs at start)
    #[argh(option, default = "600")]
    sweep_interval: u64,
    /// also rescan the whole folder every SECONDS (polling fallback where inotify sees nothing)
    #[argh(option)]
    watch: Option<u64>,
    /// do not follow the folder live
    #[argh(switch)]
    no_follow: bool,
    /// log connections, stored files and errors on stderr
    #[argh(switch, short = 'v')]
    verbose: bool,
    /// print listening lines as JSON
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// Mint a token with the server's key.
#[argh(subcommand, name = "token")]
struct TokenArgs {
    /// the owner's uid (0..2147483647)
    #[argh(option)]
    uid: u32,
    /// the login (for logs; part of the client's fid)
    #[argh(option)]
    login: String,
    /// seconds the token is valid (default: no expiry, as authd issues them)
    #[argh(option)]
    ttl: Option<u64>,
    /// HS256 key file
    #[argh(option)]
    jwt_key_file: Option<PathBuf>,
    /// served folder whose key to use (ROOT/.ferry/filestorage/jwt.key, generated if missing;
    /// default ./share)
    #[argh(option)]
    root: Option<PathBuf>,
}

#[derive(FromArgs)]
/// Store files (one batch, resumable: rerun the same command to finish it).
#[argh(subcommand, name = "put")]
struct PutArgs {
    /// files to store
    #[argh(positional)]
    files: Vec<PathBuf>,
    /// tag for every file (repeatable; `public` also publishes them into the served folder)
    #[argh(option)]
    tag: Vec<String>,
    /// chunk size 1000..65536 (default 65536)
    #[argh(option, default = "65536")]
    chunk_size: u32,
    /// TRANSFERs in flight, 1..64 (default 32; the server may allow fewer)
    #[argh(option, default = "32")]
    window: u32,
    /// transfer id instead of the derived one (one batch of at most 1024 files)
    #[argh(option)]
    fid: Option<String>,
    #[argh(option, description = "token (default $FERRY_TOKEN)")]
    token: Option<String>,
    #[argh(
        option,
        description = "server address HOST:PORT, TCP with the tcpd preamble (default 127.0.0.1:9000)"
    )]
    addr: Option<String>,
    #[argh(option, description = "the server's Unix socket")]
    unix: Option<PathBuf>,
    #[argh(switch, description = "TLS to --addr (default 127.0.0.1:9443)")]
    tls: bool,
    #[argh(option, description = "trust anchors for --tls (PEM)")]
    cert: Option<PathBuf>,
    #[argh(option, description = "TLS name to verify (default: host of --addr)")]
    server_name: Option<String>,
    #[argh(
        option,
        default = "String::from(DEFAULT_SERVICE)",
        description = "service name sent first over TCP (default filestorage)"
    )]
    service: String,
    #[argh(
        option,
        default = "30",
        description = "seconds without progress (default 30)"
    )]
    io_timeout: u64,
    #[argh(
        option,
        default = "10",
        description = "retries without progress before giving up (default 10: eleven attempts)"
    )]
    retries: u32,
    #[argh(switch, short = 'v', description = "log reconnections")]
    verbose: bool,
    #[argh(switch, description = "print the report as JSON")]
    json: bool,
}

#[derive(FromArgs)]
/// List stored files visible to the token: own files and public ones, with every tag given.
#[argh(subcommand, name = "query")]
struct QueryArgs {
    /// tag the files must carry (repeatable)
    #[argh(option)]
    tag: Vec<String>,
    /// exact file name
    #[argh(option)]
    name: Option<String>,
    #[argh(option, description = "token (default $FERRY_TOKEN)")]
    token: Option<String>,
    #[argh(
        option,
        description = "server address HOST:PORT (default 127.0.0.1:9000)"
    )]
    addr: Option<String>,
    #[argh(option, description = "the server's Unix socket")]
    unix: Option<PathBuf>,
    #[argh(switch, description = "TLS to --addr (default 127.0.0.1:9443)")]
    tls: bool,
    #[argh(option, description = "trust anchors for --tls (PEM)")]
    cert: Option<PathBuf>,
    #[argh(option, description = "TLS name to verify (default: host of --addr)")]
    server_name: Option<String>,
    #[argh(
        option,
        default = "String::from(DEFAULT_SERVICE)",
        description = "service name (default filestorage)"
    )]
    service: String,
    #[argh(
        option,
        default = "30",
        description = "seconds without progress (default 30)"
    )]
    io_timeout: u64,
    #[argh(
        option,
        default = "10",
        description = "retries without progress before giving up (default 10)"
    )]
    retries: u32,
    #[argh(switch, description = "print JSON")]
    json: bool,
}

#[derive(FromArgs)]
/// Fetch a stored file by id into a folder, verified against its SHA-256 before it appears.
#[argh(subcommand, name = "fetch")]
struct FetchArgs {
    /// store id (UUID)
    #[argh(positional)]
    id: String,
    /// output folder (default ./output)
    #[argh(option, default = "PathBuf::from(\"output\")")]
    out: PathBuf,
    #[argh(option, description = "token (default $FERRY_TOKEN)")]
    token: Option<String>,
    #[argh(
        option,
        description = "server address HOST:PORT (default 127.0.0.1:9000)"
    )]
    addr: Option<String>,
    #[argh(option, description = "the server's Unix socket")]
    unix: Option<PathBuf>,
    #[argh(switch, description = "TLS to --addr (default 127.0.0.1:9443)")]
    tls: bool,
    #[argh(option, description = "trust anchors for --tls (PEM)")]
    cert: Option<PathBuf>,
    #[argh(option, description = "TLS name to verify (default: host of --addr)")]
    server_name: Option<String>,
    #[argh(
        option,
        default = "String::from(DEFAULT_SERVICE)",
        description = "service name (default filestorage)"
    )]
    service: String,
    #[argh(
        option,
        default = "30",
        description = "seconds without progress (default 30)"
    )]
    io_timeout: u64,
    #[argh(
        option,
        default = "10",
        description = "retries without progress before giving up (default 10)"
    )]
    retries: u32,
    #[argh(switch, short = 'v', description = "log reconnections")]
    verbose: bool,
    #[argh(switch, description = "print JSON")]
    json: bool,
}

#[derive(FromArgs)]
/// Delete a stored file (operator, local; the server must be stopped).
#[argh(subcommand, name = "rm")]
struct RmArgs {
    /// store id (UUID)
    #[argh(positional)]
    id: String,
    /// served folder (default ./share)
    #[argh(option)]
    root: Option<PathBuf>,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

pub(crate) fn run(a: FilestorageArgs) -> Result<u8, Failure> {
    match a.cmd {
        FsCmd::Serve(a) => serve(a),
        FsCmd::Token(a) => token_cmd(a),
        FsCmd::Put(a) => put(a),
        FsCmd::Query(a) => query(a),
        FsCmd::Fetch(a) => fetch(a),
        FsCmd::Rm(a) => rm(a),
    }
}

/// The filestorage endpoints of a server: which listeners, and how the service behaves.
pub(crate) struct Endpoints {
    pub(crate) service: String,
    /// The Unix socket's path (its lock is `<path>.lock`).
    pub(crate) unix: Option<PathBuf>,
    pub(crate) tcp: Option<String>,
    pub(crate) tls: Option<(String, TlsSource)>,
    pub(crate) plain_remote: bool,
    pub(crate) jwt_key_file: Option<PathBuf>,
    pub(crate) quota_file: Option<PathBuf>,
    /// Bytes kept free on the file system, counting every promise of the process.
    pub(crate) disk_reserve: u64,
    pub(crate) legacy_ipc: bool,
    pub(crate) max_connections: usize,
    /// Connections from one IP address (TCP and TLS; the Unix socket's peers have none).
    pub(crate) max_per_ip: usize,
    pub(crate) io_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) preamble_timeout: Duration,
    pub(crate) window: u32,
    pub(crate) retention: Duration,
    pub(crate) sweep_every: Duration,
    pub(crate) verbose: bool,
}

impl Endpoints {
    /// `ferry serve`'s defaults: the Unix socket and loopback TCP.
    pub(crate) fn defaults(verbose: bool) -> Endpoints {
        Endpoints {
            service: DEFAULT_SERVICE.into(),
            unix: Some(fs::rundir(None).join(DEFAULT_SERVICE)),
            tcp: Some(DEFAULT_BIND.into()),
            tls: None,
            plain_remote: false,
            jwt_key_file: None,
            quota_file: None,
            disk_reserve: 64 << 20,
            legacy_ipc: false,
            max_connections: 1024,
            max_per_ip: 256,
            io_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            preamble_timeout: Duration::from_secs(10),
            window: 32,
            retention: Duration::from_secs(24 * 3600),
            sweep_every: Duration::from_secs(600),
            verbose,
        }
    }
}

/// The running store's retention sweeper; keep it until the server stops.
pub(crate) struct Running {
    _sweeper: Sweeper,
}

/// The bound endpoints, their one service, and what must live while they serve.
pub(crate) struct Bound {
    pub(crate) listeners: Vec<Listener>,
    pub(crate) service: Arc<dyn Service>,
    pub(crate) running: Running,
}

impl Bound {
    /// Adds every endpoint to `builder`; the caller keeps the returned [`Running`].
    pub(crate) fn add_to(self, mut builder: ServerBuilder) -> (ServerBuilder, Running) {
        for l in self.listeners {
            builder = builder.listener(l, self.service.clone());
        }
        (builder, self.running)
    }
}

/// Opens (and recovers) the store of `cat`'s folder, then binds the endpoints. Each listener
/// comes with the one service; all count against one connection budget.
pub(crate) fn endpoints(e: &Endpoints, cat: &Arc<CatalogHandle>) -> Result<Bound, Failure> {
    if e.unix.is_none() && e.tcp.is_none() && e.tls.is_none() {
        return Err(local("filestorage: every endpoint is off"));
    }
    if let Some(addr) = &e.tcp {
        if !e.plain_remote && !is_loopback(addr)? {
            return Err(local(format!(
                "filestorage: plain TCP on {addr} is not loopback: the JWT is a bearer token; \
                 use --tls-bind, or --plain-remote to allow it"
            )));
        }
    }
    if e.service.is_empty() || e.service.contains('/') {
        return Err(local("filestorage: --service must be a plain name"));
    }
    let quotas = match &e.quota_file {
        None => QuotaConfig::default(),
        Some(p) => {
            let bytes = std::fs::read(p).map_err(|err| local(format!("{}: {err}", p.display())))?;
            QuotaConfig::parse(&bytes).map_err(|err| local(format!("{}: {err}", p.display())))?
        }
    };
    let store_dir = fs::open_store_dir(cat.state()).map_err(local)?;
    let key = fs::load_key(&store_dir, e.jwt_key_file.as_deref()).map_err(local)?;
    let tls = match &e.tls {
        None => None,
        Some((_, TlsSource::Off)) => None,
        Some((_, TlsSource::Files { cert, key })) => {
            Some(TlsServer::from_pem_files(cert, key, &[]).map_err(local)?)
        }
        Some((_, TlsSource::SelfSigned)) => {
            let (tls, fp, generated) =
                TlsServer::self_signed(&cat.state_dir(), &[]).map_err(local)?;
            eprintln!(
                "ferry: tls certificate {} sha256 {fp}{}",
                cat.state_dir().join("tls/cert.pem").display(),
                if generated { " (generated)" } else { "" }
            );
            Some(tls)
        }
    };
    let store = Store::open(
        cat.clone(),
        StoreOptions {
            quotas,
            disk_reserve: e.disk_reserve,
            retention: e.retention,
            sweep_every: e.sweep_every,
            verbose: e.verbose,
        },
    )
    .map_err(|err| local(err.to_string()))?;
    let sweeper = store.spawn_sweeper().map_err(local)?;
    let config = ServerConfig {
        key,
        legacy_ipc: e.legacy_ipc,
        limits: FsLimits {
            window: e.window.clamp(1, 64),
            idle_timeout: e.idle_timeout,
            io_timeout: e.io_timeout,
            ..FsLimits::default()
        },
    };
    let service: Arc<dyn Service> =
        Arc::new(FilestorageService::new(store.clone(), config, e.verbose));
    let budget = ConnectionBudget::with_max_per_ip(e.max_connections, e.max_per_ip);
    let mut listeners = Vec::new();
    if let Some(path) = &e.unix {
        let mut lock = path.as_os_str().to_owned();
        lock.push(".lock");
        let cfg = ListenerConfig::unix(path)
            .unix_dir_mode(0o770)
            .unix_mode(0o660)
            .unix_lock(PathBuf::from(lock))
            .io_timeout(e.io_timeout)
            .shared_budget(&budget)
            .label("filestorage")
            .verbose(e.verbose);
        listeners.push(bind("filestorage", &path.display().to_string(), cfg)?);
    }
    let preamble = |cfg: ListenerConfig| {
        cfg.preamble(e.service.as_bytes(), PREAMBLE_OK)
            .handshake_timeout(e.preamble_timeout)
            .io_timeout(e.io_timeout)
            .shared_budget(&budget)
            .verbose(e.verbose)
    };
    if let Some(addr) = &e.tcp {
        let cfg = preamble(ListenerConfig::tcp(addr)).label("filestorage");
        listeners.push(bind("filestorage", addr, cfg)?);
    }
    if let (Some((addr, _)), Some(tls)) = (&e.tls, tls) {
        let cfg = preamble(ListenerConfig::tcp(addr).tls(tls)).label("filestorage-tls");
        listeners.push(bind("filestorage-tls", addr, cfg)?);
    }
    Ok(Bound {
        listeners,
        service,
        running: Running { _sweeper: sweeper },
    })
}

/// Whether every address `addr` resolves to is a loopback one.
fn is_loopback(addr: &str) -> Result<bool, Failure> {
    let addrs: Vec<_> = addr
        .to_socket_addrs()
        .map_err(|err| local(format!("filestorage: {addr}: {err}")))?
        .collect();
    Ok(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()))
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s.max(1))
}

fn serve(a: ServeArgs) -> Result<u8, Failure> {
    let root = a.root.clone().unwrap_or_else(|| PathBuf::from("share"));
    let shutdown = Shutdown::new();
    server::install_signal_handlers(&shutdown).map_err(local)?;
    let (cat, watcher) = open_catalog(&root, a.verbose, Follow::new(a.no_follow, a.watch))?;
    let tls_src = tls_source(false, a.cert.clone(), a.key.clone())?;
    let e = Endpoints {
        service: a.service.clone(),
        unix: (!a.no_unix).then(|| fs::rundir(a.rundir.as_deref()).join(&a.service)),
        tcp: (!a.no_tcp).then(|| a.bind.clone()),
        tls: a.tls_bind.clone().map(|addr| (addr, tls_src)),
        plain_remote: a.plain_remote,
        jwt_key_file: a.jwt_key_file.clone(),
        quota_file: a.quota_file.clone(),
        disk_reserve: a.disk_reserve,
        legacy_ipc: a.legacy_ipc,
        max_connections: a.max_connections,
        max_per_ip: super::tej::max_per_ip(a.max_per_ip, a.max_connections),
        io_timeout: secs(a.io_timeout),
        idle_timeout: secs(a.idle_timeout),
        preamble_timeout: secs(a.preamble_timeout),
        window: a.window,
        retention: Duration::from_secs(a.retention),
        sweep_every: secs(a.sweep_interval),
        verbose: a.verbose,
    };
    let grace = super::limits(a.max_connections, a.io_timeout).shutdown_grace;
    let (builder, running) =
        endpoints(&e, &cat)?.add_to(ServerBuilder::new(grace, shutdown.clone()));
    let r = run_servers(builder, shutdown, cat, watcher, a.verbose, a.json);
    drop(running);
    r
}

fn token_cmd(a: TokenArgs) -> Result<u8, Failure> {
    let key = match &a.jwt_key_file {
        Some(k) => fs::load_key(&Dir::open(Path::new(".")).map_err(local)?, Some(k)),
        None => {
            // The store's key, reached from the folder's descriptor through private folders
            // only (as the server reaches it), created with them if missing.
            let root = a.root.clone().unwrap_or_else(|| PathBuf::from("share"));
            let store = Dir::create_all(&root)
                .and_then(|d| d.private_subdir(".ferry", true))
                .and_then(|d| fs::open_store_dir(&d))
                .map_err(local)?;
            fs::load_key(&store, None)
        }
    }
    .map_err(local)?;
    if u64::from(a.uid) > token::MAX_UID {
        return Err(local("--uid must be 0..2147483647"));
    }
    if a.login.is_empty() {
        return Err(local("--login must not be empty"));
    }
    let exp = a.ttl.map(|t| (ferry_now() as u64).saturating_add(t));
    let t = token::mint(&key, a.uid, &a.login, exp);
    out!("{t}");
    Ok(EXIT_OK)
}

fn ferry_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The token from `--token`, else `FERRY_TOKEN` (so it stays out of `ps`).
fn token_of(flag: Option<String>) -> Result<String, Failure> {
    flag.or_else(|| std::env::var("FERRY_TOKEN").ok())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| local("no token: give --token or set FERRY_TOKEN"))
}

#[allow(clippy::too_many_arguments)]
fn client_options(
    addr: Option<String>,
    unix: Option<PathBuf>,
    tls: bool,
    cert: Option<PathBuf>,
    server_name: Option<String>,
    service: String,
    io_timeout: u64,
    retries: u32,
    verbose: bool,
) -> Result<ClientOptions, Failure> {
    let endpoint = match (unix, tls) {
        (Some(_), true) => return Err(local("--unix and --tls exclude each other")),
        (Some(p), false) => {
            if addr.is_some() {
                return Err(local("--unix and --addr exclude each other"));
            }
            Endpoint::Unix(p)
        }
        (None, true) => {
            let addr = addr.unwrap_or_else(|| "127.0.0.1:9443".into());
            let host = server_name.unwrap_or_else(|| host_of(&addr));
            let tls = TlsClient::new(cert.as_deref(), &[]).map_err(local)?;
            Endpoint::Tls {
                addr,
                service,
                tls,
                server_name: host,
            }
        }
        (None, false) => Endpoint::Tcp {
            addr: addr.unwrap_or_else(|| DEFAULT_BIND.into()),
            service,
        },
    };
    Ok(ClientOptions {
        endpoint,
        io_timeout: secs(io_timeout),
        retries,
        verbose,
    })
}

/// The host part of `host:port` (`[v6]:port` keeps its brackets off).
fn host_of(addr: &str) -> String {
    match addr.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']').to_string(),
        None => addr.to_string(),
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::Local(_) => EXIT_LOCAL,
            ClientError::Network(_) => EXIT_NETWORK,
            ClientError::Refused(_) | ClientError::Protocol(_) => EXIT_PROTOCOL,
            ClientError::NotFound(_) | ClientError::Verify(_) => EXIT_PARTIAL,
        };
        Failure {
            code,
            message: format!("filestorage: {e}"),
        }
    }
}

fn put(a: PutArgs) -> Result<u8, Failure> {
    // The server keeps what it stored for the rerun.
    on_interrupt(OnInterrupt::Exit("filestorage put"));
    let token = token_of(a.token)?;
    let opts = client_options(
        a.addr,
        a.unix,
        a.tls,
        a.cert,
        a.server_name,
        a.service,
        a.io_timeout,
        a.retries,
        a.verbose,
    )?;
    let fid = match a.fid {
        Some(f) => Some(
            f.parse::<Uuid>()
                .map_err(|_| local("--fid must be a UUID"))?,
        ),
        None => None,
    };
    let r = fs_client::put(
        &opts,
        &fs_client::PutOptions {
            token,
            tags: a.tag,
            chunk_size: a.chunk_size,
            window: a.window,
            fid,
        },
        &a.files,
    )?;
    if a.json {
        out!("{}", serde_json::to_string(&r).unwrap_or_default());
    } else {
        for f in &r.files {
            out!("{}  {:>12}  {}", f.id, f.size, f.name);
        }
        eprintln!(
            "filestorage: {} files, {:.1} MB in {:.2} s ({:.1} MB/s; hashing {:.2} s){}",
            r.files.len(),
            r.bytes as f64 / 1e6,
            r.seconds,
            r.bytes as f64 / 1e6 / r.seconds.max(1e-9),
            r.hash_seconds,
            if r.reconnects > 0 {
                format!(", {} reconnections", r.reconnects)
            } else {
                String::new()
            }
        );
    }
    Ok(EXIT_OK)
}

fn query(a: QueryArgs) -> Result<u8, Failure> {
    on_interrupt(OnInterrupt::Exit("filestorage query"));
    let token = token_of(a.token)?;
    let opts = client_options(
        a.addr,
        a.unix,
        a.tls,
        a.cert,
        a.server_name,
        a.service,
        a.io_timeout,
        a.retries,
        false,
    )?;
    let results = fs_client::query(&opts, &token, &a.tag, a.name.as_deref(), None, None)?;
    if a.json {
        let v: Vec<_> = results
            .iter()
            .map(|r| {
                serde_json::json!({
                    "id": r.id.to_string(),
                    "name": r.name,
                    "size": r.size,
                    "sha256": ferry::wire::hex::encode(&r.sha256),
                    "tags": r.tags,
                })
            })
            .collect();
        out!("{}", serde_json::Value::Array(v));
    } else {
        for r in &results {
            out!(
                "{}  {:>12}  {}  {}  [{}]",
                r.id,
                r.size,
                ferry::wire::hex::encode(&r.sha256),
                r.name,
                r.tags.join(",")
            );
        }
    }
    Ok(if results.is_empty() {
        EXIT_PARTIAL
    } else {
        EXIT_OK
    })
}

fn fetch(a: FetchArgs) -> Result<u8, Failure> {
    // The streaming temporary in OUT is removed before exiting (one a second signal or a
    // SIGKILL leaves is removed by the next fetch into OUT).
    on_interrupt(OnInterrupt::ExitRemovingTemporaries(
        "filestorage fetch",
        a.out.clone(),
    ));
    let token = token_of(a.token)?;
    let id: Uuid = a.id.parse().map_err(|_| local("the id must be a UUID"))?;
    let opts = client_options(
        a.addr,
        a.unix,
        a.tls,
        a.cert,
        a.server_name,
        a.service,
        a.io_timeout,
        a.retries,
        a.verbose,
    )?;
    let f = fs_client::fetch(&opts, &token, id, &a.out)?;
    if a.json {
        out!("{}", serde_json::to_string(&f).unwrap_or_default());
    } else {
        out!("{}", f.path.display());
        eprintln!(
            "filestorage: {} ({} bytes, sha256 {}) in {:.2} s",
            f.name, f.size, f.sha256, f.seconds
        );
    }
    Ok(EXIT_OK)
}

fn rm(a: RmArgs) -> Result<u8, Failure> {
    let id: Uuid = a.id.parse().map_err(|_| local("the id must be a UUID"))?;
    let root = a.root.unwrap_or_else(|| PathBuf::from("share"));
    match fs::remove(&root, &root.join(".ferry"), id) {
        Ok(r) => {
            if a.json {
                out!(
                    "{}",
                    serde_json::json!({
                        "id": id.to_string(),
                        "name": r.record.name,
                        "unpublished": r.unpublished,
                        "object_removed": r.object_removed,
                    })
                );
            } else {
                eprintln!(
                    "filestorage: removed {} ({}){}",
                    id,
                    r.record.name,
                    r.unpublished
                        .map(|n| format!("; {n} no longer published"))
                        .unwrap_or_default()
                );
            }
            Ok(EXIT_OK)
        }
        Err(StoreError::NotFound(_)) => {
            eprintln!("filestorage: no stored file {id}");
            Ok(EXIT_PARTIAL)
        }
        Err(e) => Err(local(e)),
    }
}
