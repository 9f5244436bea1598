//! A small network of hosts on one machine: one network namespace per host, all joined to a
//! bridge that lives in a namespace of its own (the "switch"), so nothing of a run is ever
//! created in, or routed through, the namespace the tests were started from.
//!
//! ```text
//!   ns fy<pid>-<n>-sw:   br0 ── h-origin ── h-m1 ── h-m2 ── h-lb ── h-client   (no address)
//!                            veth pair│  (or TAP pair + userspace wire, see wire.rs)
//!   ns fy<pid>-<n>-origin:         eth0 10.77.0.1/24, lo
//! ```
//!
//! Names carry the test process id and a per-process counter, so parallel runs and parallel
//! tests never collide, and a run killed with SIGKILL is recognised and swept by the next one
//! (its pid is gone). Every process is started with `ip netns exec` in a process group of its
//! own; [`Net`]'s `Drop` (also reached on panic) kills every group, stops the wires and deletes
//! every namespace, which takes the veth pairs and the bridge with it. Ctrl-C and SIGTERM run
//! the same teardown from a signal handler before the test binary exits.
//!
//! Impaired links: `tc netem` where the kernel has it; otherwise (this CI kernel is built without
//! `CONFIG_NET_SCH_NETEM`) the link is a pair of TAP devices with [`crate::wire`] copying frames
//! between them after the delay, dropping the given fraction. Rate limits use `tbf`.
//!
//! The hosts share the file system; each test gives each host its own folder.

#![allow(dead_code)] // the benchmark uses parts the tests do not

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::wire::{Impair, Wire};

/// The /24 every run uses: namespaces isolate runs, so they need not differ.
pub const SUBNET: [u8; 3] = [10, 77, 0];
/// Prefix of every namespace name a run creates (`fy<pid>-<n>-<host>`).
const PREFIX: &str = "fy";

/// One host to build.
#[derive(Clone, Debug)]
pub struct HostSpec {
    pub name: &'static str,
    /// Last octet of its address in [`SUBNET`].
    pub octet: u8,
    /// Delay and loss on its link, both directions.
    pub impair: Option<Impair>,
    /// Egress rate limit of the host (tbf), in Mbit/s.
    pub rate_mbit: Option<u32>,
    /// Link MTU (default 1500).
    pub mtu: Option<u32>,
}

impl HostSpec {
    pub fn new(name: &'static str, octet: u8) -> HostSpec {
        HostSpec {
            name,
            octet,
            impair: None,
            rate_mbit: None,
            mtu: None,
        }
    }
}

/// The usual five: origin, two mirrors, the load balancer and a client.
pub fn five_hosts() -> Vec<HostSpec> {
    vec![
        HostSpec::new("origin", 1),
        HostSpec::new("m1", 11),
        HostSpec::new("m2", 12),
        HostSpec::new("lb", 20),
        HostSpec::new("client", 30),
    ]
}

struct HostInfo {
    name: &'static str,
    ns: String,
    ip: Ipv4Addr,
}

/// What must be undone, shared with the signal handler.
struct Teardown {
    namespaces: Vec<String>,
    scratch: PathBuf,
    groups: Mutex<HashSet<i32>>,
    wires: Mutex<Vec<Wire>>,
    done: AtomicBool,
}

impl Teardown {
    fn run(&self) {
        if self.done.swap(true, Ordering::SeqCst) {
            return;
        }
        let groups: Vec<i32> = lock(&self.groups).drain().collect();
        for g in &groups {
            kill_group(*g);
        }
        // Stopping a wire closes its TAP devices (they are not persistent), before their
        // namespaces go.
        for w in lock(&self.wires).drain(..) {
            w.stop();
        }
        for ns in self.namespaces.iter().rev() {
            kill_namespace_pids(ns);
            let _ = quiet(Command::new("ip").args(["netns", "del", ns]));
        }
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Live teardowns, for the Ctrl-C / SIGTERM handler.
fn live() -> &'static Mutex<Vec<Arc<Teardown>>> {
    static LIVE: OnceLock<Mutex<Vec<Arc<Teardown>>>> = OnceLock::new();
    LIVE.get_or_init(|| {
        // One handler per process: tear down whatever is live, then exit as interrupted.
        let _ = ctrlc::set_handler(|| {
            let all: Vec<Arc<Teardown>> = live().lock().map(|v| v.clone()).unwrap_or_default();
            for t in all {
                t.run();
            }
            // Straight to fd 2: the test harness captures `eprintln!` of threads it started.
            use std::io::Write;
            let _ = std::io::stderr().write_all(
                b"hosts: interrupted; every namespace and process of this run was removed\n",
            );
            std::process::exit(130);
        });
        Mutex::new(Vec::new())
    })
}

/// A built network; dropping it removes everything it made.
pub struct Net {
    run: String,
    hosts: Vec<HostInfo>,
    switch: String,
    teardown: Arc<Teardown>,
    scratch: PathBuf,
}

fn quiet(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("hosts: cannot run {cmd:?}: {e}"))
}

/// Runs `ip ARGS`, panicking with its stderr on failure.
fn ip(args: &[&str]) {
    let out = quiet(Command::new("ip").args(args));
    if !out.status.success() {
        panic!(
            "hosts: `ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
}

fn kill_group(pgid: i32) {
    // SAFETY: kill(2) on a process group this harness created; a gone group gives ESRCH.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
}

fn is_pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() == libc::EPERM }
}

/// Kills whatever still runs inside `ns` (grandchildren that left their process group).
fn kill_namespace_pids(ns: &str) {
    let out = quiet(Command::new("ip").args(["netns", "pids", ns]));
    for pid in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        // SAFETY: kill(2) on a process inside a namespace this harness (or a dead run of it)
        // created.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Namespaces of this harness whose test process is gone: a run killed with SIGKILL.
fn sweep_stale() {
    let out = quiet(Command::new("ip").args(["netns", "list"]));
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let ns = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = ns.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if pid != std::process::id() as i32 && !is_pid_alive(pid) {
            kill_namespace_pids(ns);
            let _ = quiet(Command::new("ip").args(["netns", "del", ns]));
        }
    }
    // Their scratch folders too.
    if let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) {
        for e in rd.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(&format!("ferry-hosts-{PREFIX}")) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
                continue;
            };
            if pid != std::process::id() as i32 && !is_pid_alive(pid) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Whether this kernel has `tc netem` (probed once on `lo` of a namespace of ours).
fn has_netem(ns: &str) -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        let ok = quiet(Command::new("ip").args([
            "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms",
        ]))
        .status
        .success();
        if ok {
            let _ = quiet(Command::new("ip").args([
                "netns", "exec", ns, "tc", "qdisc", "del", "dev", "lo", "root",
            ]));
        }
        ok
    })
}

impl Net {
    /// Builds the hosts. Fails (panics) with a clear message when namespaces cannot be made:
    /// these tests need root and iproute2 (CI runs them as root).
    pub fn build(specs: &[HostSpec]) -> Net {
        static RUNS: AtomicU64 = AtomicU64::new(0);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            panic!("hosts: these tests build network namespaces and must run as root (CI does)");
        }
        if quiet(Command::new("ip").arg("-V")).status.code().is_none() {
            panic!("hosts: iproute2's `ip` is missing (apt-get install iproute2)");
        }
        sweep_stale();
        let run = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::SeqCst)
        );
        let switch = format!("{run}-sw");
        let hosts: Vec<HostInfo> = specs
            .iter()
            .map(|s| HostInfo {
                name: s.name,
                ns: format!("{run}-{}", s.name),
                ip: Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], s.octet),
            })
            .collect();
        let mut namespaces = vec![switch.clone()];
        namespaces.extend(hosts.iter().map(|h| h.ns.clone()));
        let scratch = std::env::temp_dir().join(format!("ferry-hosts-{run}"));
        let teardown = Arc::new(Teardown {
            namespaces,
            scratch: scratch.clone(),
            groups: Mutex::new(HashSet::new()),
            wires: Mutex::new(Vec::new()),
            done: AtomicBool::new(false),
        });
        lock(live()).push(teardown.clone());
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch).expect("scratch folder");
        // From here on, a panic drops `net`, which tears down whatever was made.
        let net = Net {
            run,
            hosts,
            switch,
            teardown,
            scratch,
        };
        let add = quiet(Command::new("ip").args(["netns", "add", &net.switch]));
        if !add.status.success() {
            panic!(
                "hosts: cannot create a network namespace ({}): these tests need root with \
                 CAP_SYS_ADMIN and CAP_NET_ADMIN",
                String::from_utf8_lossy(&add.stderr).trim()
            );
        }
        let sw = net.switch.as_str();
        ip(&["-n", sw, "link", "set", "lo", "up"]);
        ip(&["-n", sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", sw, "link", "set", "br0", "up"]);
        for (spec, h) in specs.iter().zip(&net.hosts) {
            ip(&["netns", "add", &h.ns]);
            ip(&["-n", &h.ns, "link", "set", "lo", "up"]);
            let port = format!("h-{}", h.name);
            let mtu = spec.mtu.unwrap_or(1500).to_string();
            match &spec.impair {
                Some(imp) if !has_netem(&h.ns) => {
                    let wire = Wire::start(sw, &h.ns, h.name, *imp, spec.mtu.unwrap_or(1500))
                        .unwrap_or_else(|e| panic!("hosts: wire for {}: {e}", h.name));
                    lock(&net.teardown.wires).push(wire);
                }
                _ => {
                    ip(&[
                        "-n", sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                        "netns", &h.ns,
                    ]);
                }
            }
            ip(&["-n", sw, "link", "set", &port, "mtu", &mtu]);
            ip(&["-n", sw, "link", "set", &port, "master", "br0"]);
            ip(&["-n", sw, "link", "set", &port, "up"]);
            ip(&["-n", &h.ns, "link", "set", "eth0", "mtu", &mtu]);
            ip(&[
                "-n",
                &h.ns,
                "addr",
                "add",
                &format!("{}/24", h.ip),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &h.ns, "link", "set", "eth0", "up"]);
            if let Some(imp) = &spec.impair {
                if has_netem(&h.ns) {
                    let delay = format!("{}us", imp.delay.as_micros());
                    let loss = format!("{}%", imp.loss * 100.0);
                    for (ns, dev) in [(h.ns.as_str(), "eth0"), (sw, port.as_str())] {
                        ip(&[
                            "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "netem",
                            "delay", &delay, "loss", &loss,
                        ]);
                    }
                }
            }
            if let Some(rate) = spec.rate_mbit {
                let r = format!("{rate}mbit");
                ip(&[
                    "netns", "exec", &h.ns, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf",
                    "rate", &r, "burst", "256kb", "latency", "100ms",
                ]);
            }
        }
        net
    }

    fn info(&self, host: &str) -> &HostInfo {
        self.hosts
            .iter()
            .find(|h| h.name == host)
            .unwrap_or_else(|| panic!("hosts: no host {host:?}"))
    }

    /// The host's address.
    pub fn ip(&self, host: &str) -> Ipv4Addr {
        self.info(host).ip
    }

    /// The host's namespace name.
    pub fn ns(&self, host: &str) -> &str {
        &self.info(host).ns
    }

    /// Every namespace this run made (the switch first).
    pub fn namespaces(&self) -> Vec<String> {
        self.teardown.namespaces.clone()
    }

    /// This run's name (`fy<pid>-<n>`).
    pub fn run_name(&self) -> &str {
        &self.run
    }

    /// A folder of this run (created), for host `host`'s files.
    pub fn dir(&self, host: &str, what: &str) -> PathBuf {
        let p = self.scratch.join(host).join(what);
        std::fs::create_dir_all(&p).expect("host folder");
        p
    }

    /// The run's scratch folder (removed at teardown).
    pub fn scratch(&self) -> &Path {
        &self.scratch
    }

    fn command(&self, host: &str, argv: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.ns(host)]).args(argv);
        c
    }

    /// Runs `argv` on `host` to completion (at most `timeout`), returning its output.
    pub fn run(&self, host: &str, argv: &[&str], timeout: Duration) -> Output {
        let p = self.spawn(host, "run", argv);
        p.wait_output(timeout)
    }

    /// Runs a `sh -c` script on `host` to completion.
    pub fn sh(&self, host: &str, script: &str, timeout: Duration) -> Output {
        self.run(host, &["sh", "-c", script], timeout)
    }

    /// Starts `argv` on `host` in a process group of its own; stdout is read line by line,
    /// stderr goes to `<scratch>/<host>/<tag>.<n>.stderr`.
    pub fn spawn(&self, host: &str, tag: &str, argv: &[&str]) -> Proc {
        static N: AtomicU64 = AtomicU64::new(0);
        let log = self
            .dir(host, "logs")
            .join(format!("{tag}.{}.stderr", N.fetch_add(1, Ordering::SeqCst)));
        let err = std::fs::File::create(&log).expect("stderr log");
        let mut cmd = self.command(host, argv);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .process_group(0);
        // SAFETY: prctl in the child before exec; async-signal-safe. The child dies with the
        // thread that started it if the test binary is killed outright.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("hosts: spawn {argv:?} on {host}: {e}"));
        let pgid = child.id() as i32;
        lock(&self.teardown.groups).insert(pgid);
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
                all.extend_from_slice(&line);
                all.push(b'\n');
                let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
            }
            all
        });
        Proc {
            child,
            pgid,
            lines: rx,
            reader: Some(reader),
            log,
            teardown: self.teardown.clone(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Bytes received and sent on `host`'s eth0 so far (its sysfs counters).
    pub fn eth0_bytes(&self, host: &str) -> (u64, u64) {
        let out = self.sh(
            host,
            "cat /sys/class/net/eth0/statistics/rx_bytes /sys/class/net/eth0/statistics/tx_bytes",
            Duration::from_secs(10),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let v: Vec<u64> = text
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect();
        assert_eq!(v.len(), 2, "hosts: counters of {host}: {text:?}");
        (v[0], v[1])
    }

    /// Undoes everything now (also done on drop).
    pub fn teardown(&self) {
        self.teardown.run();
        lock(live()).retain(|t| !Arc::ptr_eq(t, &self.teardown));
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Namespaces of run `run` that still exist.
pub fn leftover_namespaces(run: &str) -> Vec<String> {
    let out = quiet(Command::new("ip").args(["netns", "list"]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|ns| ns.starts_with(&format!("{run}-")))
        .map(str::to_string)
        .collect()
}

/// A process on a host; its process group is killed on drop.
pub struct Proc {
    child: Child,
    pgid: i32,
    lines: mpsc::Receiver<String>,
    reader: Option<std::thread::JoinHandle<Vec<u8>>>,
    log: PathBuf,
    teardown: Arc<Teardown>,
    argv: Vec<String>,
}

impl Proc {
    /// Waits for `n` `listening <proto> <addr>` lines; returns (proto, addr) pairs.
    pub fn listening(&self, n: usize, timeout: Duration) -> Vec<(String, String)> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        while got.len() < n {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    let mut it = line.split_whitespace();
                    if it.next() == Some("listening") {
                        got.push((
                            it.next().unwrap_or("").to_string(),
                            it.next().unwrap_or("").to_string(),
                        ));
                    }
                }
                Err(_) => panic!(
                    "hosts: {:?} printed {} of {n} listening lines; stderr:\n{}",
                    self.argv,
                    got.len(),
                    self.stderr()
                ),
            }
        }
        got
    }

    /// The next stdout line, if one comes within `timeout`.
    pub fn next_line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// What the process wrote on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the whole process group at once (SIGKILL), as a dying host would.
    pub fn kill(&mut self) {
        kill_group(self.pgid);
        let _ = self.child.wait();
        lock(&self.teardown.groups).remove(&self.pgid);
    }

    /// Sends `sig` to the process group.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the process group this Proc owns.
        unsafe { libc::kill(-self.pgid, sig) };
    }

    /// Waits for the process to exit (killing it after `timeout`, then panicking).
    pub fn wait_output(mut self, timeout: Duration) -> Output {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                break s;
            }
            if Instant::now() >= deadline {
                self.kill();
                panic!(
                    "hosts: {:?} did not finish within {timeout:?}; stderr:\n{}",
                    self.argv,
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        // Grandchildren that kept the group alive go too.
        kill_group(self.pgid);
        lock(&self.teardown.groups).remove(&self.pgid);
        let stdout = self
            .reader
            .take()
            .and_then(|r| r.join().ok())
            .unwrap_or_default();
        Output {
            status,
            stdout,
            stderr: std::fs::read(&self.log).unwrap_or_default(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if lock(&self.teardown.groups).remove(&self.pgid) {
            kill_group(self.pgid);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
