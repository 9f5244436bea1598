//! The deployment of the README's "Running mirrors", on a [`Net`]: `origin` serves a folder;
//! `m1` and `m2` each keep a mirror of it with `ferry sync` in a loop, as cron would, and serve
//! the mirror; `lb` runs HAProxy in TCP mode in front of the mirrors' TEJ and JTP ports.
//!
//! Ports are fixed (8000 TEJ, 8443 JTP, 24254 CJP2P) because HAProxy's configuration names them;
//! every host is its own namespace, so nothing else can hold them. JTP runs TLS with the test
//! certificate of `certs/` (a leaf for `localhost`), so the client verifies it through the
//! balancer with `--server-name localhost`.

#![allow(dead_code)] // the benchmark uses parts the tests do not

use std::path::PathBuf;
use std::time::Duration;

use crate::fixtures::{self, tree};
use crate::net::{Net, Proc};
use crate::tools;
use crate::FERRY;

pub const TEJ_PORT: u16 = 8000;
pub const JTP_PORT: u16 = 8443;
pub const CJP2P_PORT: u16 = 24254;
pub const FASTDP_PORT: u16 = 5423;
pub const FILESTORAGE_PORT: u16 = 9000;
pub const MIRRORS: [&str; 2] = ["m1", "m2"];

/// The test certificates (`make certs`).
pub fn certs() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("certs");
    assert!(
        d.join("cert.pem").exists() && d.join("ca.pem").exists(),
        "hosts: {} lacks cert.pem/ca.pem: run `make certs`",
        d.display()
    );
    d
}

fn s(p: &std::path::Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// `ferry serve DIR` on `host`'s address, TLS with the test certificate (the catalog follows
/// the folder live); waits for its three listening lines.
pub fn serve(net: &Net, host: &str, dir: &std::path::Path) -> Proc {
    let ip = net.ip(host);
    let c = certs();
    let p = net.spawn(
        host,
        "serve",
        &[
            FERRY,
            "serve",
            s(dir),
            "--jtp-bind",
            &format!("{ip}:{JTP_PORT}"),
            "--tej-bind",
            &format!("{ip}:{TEJ_PORT}"),
            "--cjp2p-bind",
            &format!("{ip}:{CJP2P_PORT}"),
            "--fastdp-bind",
            &format!("{ip}:{FASTDP_PORT}"),
            // Plain filestorage carries a bearer token: the host's own loopback only.
            "--filestorage-bind",
            &format!("127.0.0.1:{FILESTORAGE_PORT}"),
            // Hosts share one file system: each its own libIPC run folder.
            "--filestorage-unix",
            s(&net.dir(host, "run").join("filestorage")),
            "--cert",
            s(&c.join("cert.pem")),
            "--key",
            s(&c.join("key.pem")),
        ],
    );
    // JTP, TEJ, CJP2P, FastDP, filestorage over TCP and over its Unix socket.
    p.listening(6, Duration::from_secs(60));
    p
}

/// The cron job of a mirror: `ferry sync tej://origin DIR --delete --json` every `period`,
/// one JSON summary per run appended to `log`.
pub fn sync_loop(
    net: &Net,
    host: &str,
    dir: &std::path::Path,
    period: Duration,
    log: &std::path::Path,
) -> Proc {
    let script = format!(
        "while :; do {FERRY} sync tej://{origin}:{TEJ_PORT} {dir} --delete --json >> {log} \
         2>> {log}.err; sleep {secs}; done",
        origin = net.ip("origin"),
        dir = s(dir),
        log = s(log),
        secs = period.as_secs_f64()
    );
    net.spawn(host, "sync-loop", &["sh", "-c", &script])
}

/// Every summary a sync loop wrote so far.
pub fn sync_runs(log: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The running deployment; dropping it stops every process (the [`Net`] removes the rest).
pub struct Deployment<'n> {
    pub net: &'n Net,
    pub period: Duration,
    pub origin_dir: PathBuf,
    pub mirror_dirs: Vec<PathBuf>,
    pub sync_logs: Vec<PathBuf>,
    pub origin: Proc,
    pub serving: Vec<Option<Proc>>,
    pub loops: Vec<Option<Proc>>,
    pub lb: Proc,
}

impl<'n> Deployment<'n> {
    /// Starts origin (serving what `origin_dir` already holds), both mirrors' loops and servers,
    /// and HAProxy; returns once both mirrors match origin.
    pub fn start(net: &'n Net, period: Duration) -> Deployment<'n> {
        tools::ensure("haproxy", "haproxy");
        let origin_dir = net.dir("origin", "share");
        let origin = serve(net, "origin", &origin_dir);
        let mut mirror_dirs = Vec::new();
        let mut sync_logs = Vec::new();
        let mut serving = Vec::new();
        let mut loops = Vec::new();
        for m in MIRRORS {
            let dir = net.dir(m, "mirror");
            let log = net.dir(m, "logs").join("sync.jsonl");
            loops.push(Some(sync_loop(net, m, &dir, period, &log)));
            serving.push(Some(serve(net, m, &dir)));
            mirror_dirs.push(dir);
            sync_logs.push(log);
        }
        let cfg_path = net.dir("lb", "etc").join("haproxy.cfg");
        let cfg = tools::haproxy_config(
            net.ip("lb"),
            &[("m1", net.ip("m1")), ("m2", net.ip("m2"))],
            &[
                tools::Service {
                    name: "tej",
                    port: TEJ_PORT,
                },
                tools::Service {
                    name: "jtp",
                    port: JTP_PORT,
                },
            ],
        );
        std::fs::write(&cfg_path, cfg).expect("haproxy.cfg");
        tools::haproxy_check(&cfg_path);
        let lb = net.spawn("lb", "haproxy", &["haproxy", "-db", "-f", s(&cfg_path)]);
        let d = Deployment {
            net,
            period,
            origin_dir,
            mirror_dirs,
            sync_logs,
            origin,
            serving,
            loops,
            lb,
        };
        d.wait_mirrors_match(Duration::from_secs(120))
            .expect("the mirrors never matched origin");
        d.wait_mirrors_serve_origin(Duration::from_secs(30))
            .expect("the mirrors' servers never listed origin's files");
        // The balancer is up and forwards.
        let front = d.front(TEJ_PORT);
        let up = fixtures::wait_until(Duration::from_secs(30), || {
            !tej_listing(net, "client", &front).is_empty()
        });
        assert!(
            up.is_some(),
            "hosts: lb never forwarded; haproxy says:\n{}",
            d.lb.stderr()
        );
        d
    }

    /// Waits until both mirrors hold exactly origin's files; the time it took.
    pub fn wait_mirrors_match(&self, timeout: Duration) -> Option<Duration> {
        fixtures::wait_until(timeout, || {
            let want = tree(&self.origin_dir);
            self.mirror_dirs.iter().all(|d| tree(d) == want)
        })
    }

    /// Kills mirror `i` (its server and its cron loop) at once, as a host that dies.
    pub fn kill_mirror(&mut self, i: usize) {
        if let Some(mut p) = self.serving[i].take() {
            p.kill();
        }
        if let Some(mut p) = self.loops[i].take() {
            p.kill();
        }
    }

    /// Brings mirror `i` back (server and loop).
    pub fn restart_mirror(&mut self, i: usize) {
        let m = MIRRORS[i];
        self.loops[i] = Some(sync_loop(
            self.net,
            m,
            &self.mirror_dirs[i],
            self.period,
            &self.sync_logs[i],
        ));
        self.serving[i] = Some(serve(self.net, m, &self.mirror_dirs[i]));
    }

    /// Which mirror is sending a transfer on `port`: a connection that has sent over `min`
    /// bytes (the balancer's health checks send nothing), if any.
    pub fn serving_mirror(&self, port: u16, min: u64) -> Option<usize> {
        (0..MIRRORS.len()).find(|&i| {
            self.serving[i].is_some() && {
                let out = self.net.run(
                    MIRRORS[i],
                    &[
                        "ss",
                        "-Htni",
                        "state",
                        "established",
                        &format!("( sport = :{port} )"),
                    ],
                    Duration::from_secs(10),
                );
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .filter_map(|w| w.strip_prefix("bytes_sent:"))
                    .filter_map(|n| n.parse::<u64>().ok())
                    .any(|n| n > min)
            }
        })
    }

    /// Waits until a mirror has sent `min` bytes of one transfer on `port`; which one.
    pub fn wait_serving_mirror(&self, port: u16, min: u64, client: &mut Proc) -> usize {
        let mut found = None;
        let mut gone = false;
        fixtures::wait_until(Duration::from_secs(60), || {
            found = self.serving_mirror(port, min);
            gone = !client.is_alive();
            found.is_some() || gone
        });
        if gone && found.is_none() {
            panic!(
                "hosts: the client ended before a mirror sent {min} bytes: {}{}",
                client.next_line(Duration::from_secs(1)).unwrap_or_default(),
                client.stderr()
            );
        }
        found.unwrap_or_else(|| {
            let ss: Vec<String> = ["m1", "m2", "client", "lb"]
                .iter()
                .map(|m| {
                    let o = self.net.run(m, &["ss", "-tanp"], Duration::from_secs(10));
                    format!("{m}:\n{}", String::from_utf8_lossy(&o.stdout))
                })
                .collect();
            panic!(
                "hosts: no mirror sent {min} bytes on port {port}; the client ({}, wchan {}) says:\n{}\n{}\nlb:\n{}",
                client.pid(),
                std::fs::read_to_string(format!("/proc/{}/wchan", client.pid())).unwrap_or_default(),
                client.stderr(),
                ss.join("\n"),
                self.lb.stderr()
            )
        })
    }

    /// Waits until every running mirror's own server lists exactly origin's files over TEJ.
    pub fn wait_mirrors_serve_origin(&self, timeout: Duration) -> Option<Duration> {
        let want: Vec<(String, String)> = tree(&self.origin_dir)
            .into_iter()
            .map(|(n, h)| (n, fixtures::hex(&h)))
            .collect();
        fixtures::wait_until(timeout, || {
            (0..MIRRORS.len())
                .filter(|&i| self.serving[i].is_some())
                .all(|i| {
                    let addr = format!("{}:{TEJ_PORT}", self.net.ip(MIRRORS[i]));
                    tej_listing(self.net, "client", &addr) == want
                })
        })
    }

    /// `lb`'s address with `port`.
    pub fn front(&self, port: u16) -> String {
        format!("{}:{port}", self.net.ip("lb"))
    }
}

/// (name, sha256 hex) of every file `ferry tej list` shows at `addr`, from `host`, sorted.
pub fn tej_listing(net: &Net, host: &str, addr: &str) -> Vec<(String, String)> {
    let out = net.run(
        host,
        &[FERRY, "tej", "list", "--addr", addr, "--json"],
        Duration::from_secs(30),
    );
    let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut got: Vec<(String, String)> = v
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or("").to_string(),
                e["sha256"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    got.sort();
    got
}
