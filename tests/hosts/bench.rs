//! `make bench-hosts`: the multi-host rows of issue 14, measured in one run on the hosts of
//! `net.rs`, with the peers (rsync, a direct connection, one source) measured in the same run.
//! Prints one table and writes `target/bench/hosts.{md,json}`.
//!
//! An `#[ignore]`d test of the `hosts` target, so it shares the harness (namespaces, teardown
//! on any exit) with the tests; `benches/bench_hosts.sh` runs it in release mode. Data lives in
//! the run's scratch folder under /tmp and goes with the network.
//!
//! Sizes can be lowered for a quick look: `BENCH_HOSTS_FILES` (default 10000),
//! `BENCH_HOSTS_BIG_MIB` (default 1024), `BENCH_HOSTS_CJP2P_MIB` (default 16).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::deploy::{self, CJP2P_PORT, JTP_PORT, TEJ_PORT};
use crate::fixtures::{self, pseudo_random};
use crate::net::{HostSpec, Net, Proc};
use crate::tools;
use crate::wire::Impair;
use crate::FERRY;

const LONG: Duration = Duration::from_secs(1800);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Runs `argv` on `host`, asserting success; (wall time, output).
fn timed(net: &Net, host: &str, argv: &[&str]) -> (Duration, Output) {
    let t = Instant::now();
    let out = net.run(host, argv, LONG);
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "bench: {host}: {argv:?}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (took, out)
}

/// CPU seconds (user + system, its reaped children included) of process `pid` so far.
fn cpu_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<f64> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| {
            rest.split_whitespace()
                .map(|f| f.parse().unwrap_or(0.0))
                .collect()
        })
        .unwrap_or_default();
    // Fields 14-17 of stat(5) (utime, stime, cutime, cstime), counted from the state field (3).
    let ticks: f64 = fields.get(11..15).map_or(0.0, |v| v.iter().sum());
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Like [`timed`], also giving the command's own CPU seconds (user + system, from GNU time).
fn timed_cpu(net: &Net, host: &str, argv: &[&str]) -> (Duration, Output, f64) {
    let file = net.dir(host, "logs").join("time.out");
    let mut wrapped = vec!["/usr/bin/time", "-f", "%U %S", "-o", s(&file)];
    wrapped.extend_from_slice(argv);
    let (t, out) = timed(net, host, &wrapped);
    let cpu = std::fs::read_to_string(&file)
        .unwrap_or_default()
        .lines()
        .last()
        .map(|l| {
            l.split_whitespace()
                .filter_map(|v| v.parse::<f64>().ok())
                .sum()
        })
        .unwrap_or(f64::NAN);
    (t, out, cpu)
}

/// Bytes through `host`'s eth0 (both directions) while `f` runs, and `f`'s result.
fn on_wire<T>(net: &Net, host: &str, f: impl FnOnce() -> T) -> (u64, T) {
    let (rx0, tx0) = net.eth0_bytes(host);
    let r = f();
    let (rx1, tx1) = net.eth0_bytes(host);
    ((rx1 - rx0) + (tx1 - tx0), r)
}

fn best_median(v: &[f64]) -> (f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2])
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

struct Row {
    name: String,
    ferry: String,
    peer: String,
    target: String,
    verdict: String,
}

fn verdict(ok: bool) -> String {
    if ok { "pass" } else { "FAIL" }.to_string()
}

/// 10,000 files of 1 to 100 KB and one big file, in `dir`.
fn make_data(dir: &Path, files: u64, big_mib: u64) -> u64 {
    let mut total = 0;
    for i in 0..files {
        let len = 1000 + (pseudo_random(i ^ 0xabc, 8)[0] as u64 * 997 + i * 7919) % 99_001;
        std::fs::write(
            dir.join(format!("f{i:05}.dat")),
            pseudo_random(i, len as usize),
        )
        .unwrap();
        total += len;
    }
    fixtures::write_file(&dir.join("big.png"), 0xb16, big_mib << 20);
    total + (big_mib << 20)
}

/// rsync daemon on `origin` serving `dir` read-only as module `share` (ferry's state excluded).
fn rsync_daemon(net: &Net, dir: &Path) -> Proc {
    let conf = net.dir("origin", "etc").join("rsyncd.conf");
    std::fs::write(
        &conf,
        format!(
            "address = {ip}\nport = 873\nuse chroot = no\npid file = {pid}\n\n[share]\n    \
             path = {path}\n    read only = yes\n    uid = root\n    gid = root\n    \
             exclude = .ferry/\n",
            ip = net.ip("origin"),
            pid = s(&net.dir("origin", "run").join("rsyncd.pid")),
            path = s(dir)
        ),
    )
    .unwrap();
    let p = net.spawn(
        "origin",
        "rsyncd",
        &[
            "rsync",
            "--daemon",
            "--no-detach",
            &format!("--config={}", s(&conf)),
        ],
    );
    let up = fixtures::wait_until(Duration::from_secs(20), || {
        net.run(
            "m1",
            &["rsync", &format!("rsync://{}/", net.ip("origin"))],
            Duration::from_secs(10),
        )
        .status
        .success()
    });
    assert!(up.is_some(), "rsync daemon never answered: {}", p.stderr());
    p
}

/// One run of a tool: wall time, CPU seconds of the client and of the server for it.
#[derive(Clone, Copy, Debug)]
struct Run {
    wall: Duration,
    client_cpu: f64,
    server_cpu: f64,
}

impl Run {
    fn cpu(&self) -> f64 {
        self.client_cpu + self.server_cpu
    }
}

/// `rsync -a [--delete] rsync://origin/share/ DEST` on m1; `daemon` is the rsync daemon (its
/// children's CPU is the server side).
fn rsync(net: &Net, daemon: &Proc, dest: &Path, delete: bool) -> Run {
    let src = format!("rsync://{}/share/", net.ip("origin"));
    let mut argv = vec!["rsync", "-a"];
    if delete {
        argv.push("--delete");
    }
    argv.extend_from_slice(&[&src, s(dest)]);
    let before = cpu_of(daemon.pid());
    let (wall, _, client_cpu) = timed_cpu(net, "m1", &argv);
    // The daemon reaps its connection's child shortly after the client is done.
    std::thread::sleep(Duration::from_millis(200));
    Run {
        wall,
        client_cpu,
        server_cpu: cpu_of(daemon.pid()) - before,
    }
}

fn ferry_sync(net: &Net, host: &str, server: &Proc, dest: &Path, delete: bool) -> (Run, Value) {
    let url = format!("tej://{}:{TEJ_PORT}", net.ip("origin"));
    let mut argv = vec![FERRY, "sync", &url, s(dest), "--json"];
    if delete {
        argv.push("--delete");
    }
    let before = cpu_of(server.pid());
    let (wall, out, client_cpu) = timed_cpu(net, host, &argv);
    let run = Run {
        wall,
        client_cpu,
        server_cpu: cpu_of(server.pid()) - before,
    };
    (
        run,
        serde_json::from_slice(&out.stdout).expect("sync --json"),
    )
}

/// Waits until origin's server lists exactly the files of its folder.
fn wait_origin_serves(net: &Net, dir: &Path) {
    let want: Vec<(String, String)> = fixtures::tree(dir)
        .into_iter()
        .map(|(n, h)| (n, fixtures::hex(&h)))
        .collect();
    let addr = format!("{}:{TEJ_PORT}", net.ip("origin"));
    let ok = fixtures::wait_until(Duration::from_secs(120), || {
        deploy::tej_listing(net, "m1", &addr) == want
    });
    assert!(ok.is_some(), "origin never served its changed folder");
}

#[test]
#[ignore = "benchmark: run by `make bench-hosts`"]
fn bench_hosts() {
    tools::ensure("rsync", "rsync");
    tools::ensure("haproxy", "haproxy");
    let files = env_u64("BENCH_HOSTS_FILES", 10_000);
    let big_mib = env_u64("BENCH_HOSTS_BIG_MIB", 1024);
    let mut rows = Vec::new();
    let mut raw = serde_json::Map::new();
    let load0 = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let say = |m: &str| eprintln!("bench-hosts: {m}");

    let net = Net::build(&crate::net::five_hosts());
    let share = net.dir("origin", "share");
    let t = Instant::now();
    let total = make_data(&share, files, big_mib);
    say(&format!(
        "{files} files + {big_mib} MiB ({:.0} MB) made in {:.1} s",
        mb(total),
        secs(t.elapsed())
    ));
    let origin = deploy::serve(&net, "origin", &share);
    let rsyncd = rsync_daemon(&net, &share);
    wait_origin_serves(&net, &share);

    // Row 1: first sync, best of two each, alternating.
    let m1_ferry = net.dir("m1", "ferry");
    let m1_rsync = net.dir("m1", "rsync");
    let (mut f_runs, mut r_runs, mut f_bytes, mut r_bytes) = (vec![], vec![], 0, 0);
    for round in 0..2 {
        for d in [&m1_ferry, &m1_rsync] {
            let _ = std::fs::remove_dir_all(d);
            std::fs::create_dir_all(d).unwrap();
        }
        let (b, (run, j)) = on_wire(&net, "m1", || {
            ferry_sync(&net, "m1", &origin, &m1_ferry, true)
        });
        assert_eq!(j["failed"], 0, "{j}");
        f_runs.push(run);
        f_bytes = b;
        let (b, run) = on_wire(&net, "m1", || rsync(&net, &rsyncd, &m1_rsync, true));
        r_runs.push(run);
        r_bytes = b;
        say(&format!(
            "first sync round {round}: ferry {:.2} s ({:.2} CPU s), rsync {:.2} s ({:.2} CPU s)",
            secs(f_runs[round].wall),
            f_runs[round].cpu(),
            secs(r_runs[round].wall),
            r_runs[round].cpu()
        ));
    }
    assert_eq!(fixtures::tree(&m1_ferry), fixtures::tree(&share));
    let walls = |v: &[Run]| v.iter().map(|r| secs(r.wall)).collect::<Vec<f64>>();
    let cpus = |v: &[Run]| best_median(&v.iter().map(Run::cpu).collect::<Vec<f64>>()).0;
    let (fb, fm) = best_median(&walls(&f_runs));
    let (rb, rm) = best_median(&walls(&r_runs));
    rows.push(Row {
        name: format!(
            "first sync, {files} files (1-100 KB) + {big_mib} MiB, origin -> m1 (best / median of 2; CPU s of client + server)"
        ),
        ferry: format!(
            "{fb:.2} s / {fm:.2} s ({:.0} MB on the wire; {:.2} CPU s)",
            mb(f_bytes),
            cpus(&f_runs)
        ),
        peer: format!(
            "rsync -a from an rsync daemon: {rb:.2} s / {rm:.2} s ({:.0} MB on the wire; {:.2} CPU s)",
            mb(r_bytes),
            cpus(&r_runs)
        ),
        target: "ferry faster than rsync".into(),
        verdict: verdict(fb < rb),
    });
    raw.insert(
        "first_sync".into(),
        json!({"ferry_s": walls(&f_runs), "rsync_s": walls(&r_runs),
               "ferry_cpu_s": f_runs.iter().map(Run::cpu).collect::<Vec<_>>(),
               "rsync_cpu_s": r_runs.iter().map(Run::cpu).collect::<Vec<_>>(),
               "ferry_wire_bytes": f_bytes, "rsync_wire_bytes": r_bytes, "payload_bytes": total}),
    );

    // Row 2: 1 % of the files rewritten with new content, 1 % renamed.
    let step = 100;
    let mut changed = 0u64;
    for i in (0..files).step_by(step) {
        let p = share.join(format!("f{i:05}.dat"));
        let len = std::fs::metadata(&p).unwrap().len();
        fixtures::write_file_atomic(&p, i ^ 0x5eed, len);
        changed += len;
    }
    for i in (50..files).step_by(step) {
        std::fs::rename(
            share.join(format!("f{i:05}.dat")),
            share.join(format!("r{i:05}.dat")),
        )
        .unwrap();
    }
    wait_origin_serves(&net, &share);
    let (f_b, (f_run, j)) = on_wire(&net, "m1", || {
        ferry_sync(&net, "m1", &origin, &m1_ferry, true)
    });
    let (r_b, r_run) = on_wire(&net, "m1", || rsync(&net, &rsyncd, &m1_rsync, true));
    assert_eq!(j["failed"], 0, "{j}");
    assert_eq!(fixtures::tree(&m1_ferry), fixtures::tree(&share));
    assert_eq!(fixtures::tree(&m1_rsync), fixtures::tree(&share));
    rows.push(Row {
        name: format!(
            "second sync after 1 % changed ({} files, {:.1} MB, new content) and 1 % renamed",
            files / step as u64,
            mb(changed)
        ),
        ferry: format!(
            "{:.2} s, {:.1} MB on the wire ({} fetched, {} moved; {:.2} CPU s)",
            secs(f_run.wall),
            mb(f_b),
            j["fetched"],
            j["moved"],
            f_run.cpu()
        ),
        peer: format!(
            "rsync -a --delete: {:.2} s, {:.1} MB on the wire ({:.2} CPU s)",
            secs(r_run.wall),
            mb(r_b),
            r_run.cpu()
        ),
        target: "ferry faster than rsync, bytes within 1.2x of rsync's".into(),
        verdict: verdict(f_run.wall < r_run.wall && (f_b as f64) <= 1.2 * r_b as f64),
    });
    raw.insert(
        "second_sync".into(),
        json!({"ferry_s": secs(f_run.wall), "rsync_s": secs(r_run.wall),
               "ferry_cpu_s": f_run.cpu(), "rsync_cpu_s": r_run.cpu(),
               "ferry_wire_bytes": f_b, "rsync_wire_bytes": r_b, "changed_bytes": changed, "ferry": j}),
    );

    // Row 3: nothing changed (the cron case).
    let mut f_nc = Vec::new();
    let mut r_nc = Vec::new();
    let mut own = Vec::new();
    for _ in 0..5 {
        let (run, j) = ferry_sync(&net, "m1", &origin, &m1_ferry, true);
        assert_eq!(j["fetched"], 0);
        f_nc.push(secs(run.wall));
        own.push(j["seconds"].as_f64().unwrap_or(0.0));
        r_nc.push(secs(rsync(&net, &rsyncd, &m1_rsync, true).wall));
    }
    let (fb, fm) = best_median(&f_nc);
    let (rb, rm) = best_median(&r_nc);
    rows.push(Row {
        name: format!("sync with nothing changed, {files} files (best / median of 5)"),
        ferry: format!(
            "{fb:.3} s / {fm:.3} s (by its own clock {:.3} s median)",
            best_median(&own).1
        ),
        peer: format!("rsync -a --delete: {rb:.3} s / {rm:.3} s"),
        target: "< 0.5 s".into(),
        verdict: verdict(fm < 0.5),
    });
    raw.insert(
        "no_change".into(),
        json!({"ferry_s": f_nc, "ferry_own_s": own, "rsync_s": r_nc}),
    );
    let _ = std::fs::remove_dir_all(&m1_rsync);

    // Rows 4 and 5: the mirrors behind HAProxy. m2 gets its mirror by sync too.
    let m2_dir = net.dir("m2", "mirror");
    let (run, _) = ferry_sync(&net, "m2", &origin, &m2_dir, true);
    say(&format!("m2 mirrored in {:.1} s", secs(run.wall)));
    let _m1 = deploy::serve(&net, "m1", &m1_ferry);
    let _m2 = deploy::serve(&net, "m2", &m2_dir);
    let cfg_path = net.dir("lb", "etc").join("haproxy.cfg");
    std::fs::write(
        &cfg_path,
        tools::haproxy_config(
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
        ),
    )
    .unwrap();
    let _lb = net.spawn("lb", "haproxy", &["haproxy", "-db", "-f", s(&cfg_path)]);
    let lb_tej = format!("{}:{TEJ_PORT}", net.ip("lb"));
    let ok = fixtures::wait_until(Duration::from_secs(30), || {
        !deploy::tej_listing(&net, "client", &lb_tej).is_empty()
    });
    assert!(ok.is_some(), "lb never forwarded");

    let out = net.dir("client", "out");
    let ca = deploy::certs().join("ca.pem");
    let big_id = {
        let o = timed(
            &net,
            "client",
            &[
                FERRY,
                "jtp",
                "list",
                "--addr",
                &format!("{}:{JTP_PORT}", net.ip("m1")),
                "--cert",
                s(&ca),
                "--server-name",
                "localhost",
                "--json",
            ],
        )
        .1;
        let v: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
        v.iter()
            .find(|e| e["name"] == "big.png")
            .map(|e| e["id"].as_str().unwrap().to_string())
            .expect("big.png in the JTP listing")
    };
    for (proto, label) in [
        ("tej", "TEJ plain, ferry tej get"),
        ("jtp", "JTP TLS 1.3, ferry jtp get"),
    ] {
        let (mut via_lb, mut direct) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            for (addr_host, v) in [("lb", &mut via_lb), ("m1", &mut direct)] {
                let _ = std::fs::remove_dir_all(&out);
                std::fs::create_dir_all(&out).unwrap();
                let t = match proto {
                    "tej" => {
                        let addr = format!("{}:{TEJ_PORT}", net.ip(addr_host));
                        timed(
                            &net,
                            "client",
                            &[
                                FERRY,
                                "tej",
                                "get",
                                "--addr",
                                &addr,
                                "--out",
                                s(&out),
                                "big.png",
                            ],
                        )
                        .0
                    }
                    _ => {
                        let addr = format!("{}:{JTP_PORT}", net.ip(addr_host));
                        timed(
                            &net,
                            "client",
                            &[
                                FERRY,
                                "jtp",
                                "get",
                                "--addr",
                                &addr,
                                "--cert",
                                s(&ca),
                                "--server-name",
                                "localhost",
                                "--out",
                                s(&out),
                                &big_id,
                            ],
                        )
                        .0
                    }
                };
                v.push((big_mib << 20) as f64 / secs(t) / 1e9);
            }
        }
        let max = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
        let med = |v: &[f64]| {
            let mut w = v.to_vec();
            w.sort_by(f64::total_cmp);
            w[w.len() / 2]
        };
        let ratio = med(&via_lb) / med(&direct);
        rows.push(Row {
            name: format!("{big_mib} MiB through HAProxy (lb -> m1/m2) against m1 direct, {label} (best / median of 3)"),
            ferry: format!(
                "{:.2} GB/s / {:.2} GB/s through lb ({ratio:.2}x direct)",
                max(&via_lb),
                med(&via_lb)
            ),
            peer: format!("direct: {:.2} GB/s / {:.2} GB/s", max(&direct), med(&direct)),
            target: ">= 0.9x direct".into(),
            verdict: verdict(ratio >= 0.9),
        });
        raw.insert(
            format!("haproxy_{proto}"),
            json!({"via_lb_gbps": via_lb, "direct_gbps": direct}),
        );
    }

    // Row 5: 30 clients at once, each a different tenth of a thousand small files.
    let per = (files as usize / 30).min(300);
    let names: Vec<Vec<String>> = (0..30)
        .map(|c| {
            (0..per)
                .map(|k| {
                    let i = (c * per + k) as u64;
                    // Renamed files carry an r prefix since row 2.
                    if i >= 50 && (i - 50) % step as u64 == 0 {
                        format!("r{i:05}.dat")
                    } else {
                        format!("f{i:05}.dat")
                    }
                })
                .collect()
        })
        .collect();
    let mut agg = Vec::new();
    for target in ["lb", "m1"] {
        let _ = std::fs::remove_dir_all(&out);
        let addr = format!("{}:{TEJ_PORT}", net.ip(target));
        let t = Instant::now();
        let procs: Vec<Proc> = names
            .iter()
            .enumerate()
            .map(|(c, list)| {
                let dir = out.join(format!("c{c:02}"));
                std::fs::create_dir_all(&dir).unwrap();
                let mut argv = vec![FERRY, "tej", "get", "--addr", &addr, "--out", s(&dir)];
                argv.extend(list.iter().map(String::as_str));
                let argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
                let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
                net.spawn("client", "tej-get", &refs)
            })
            .collect();
        for p in procs {
            let o = p.wait_output(LONG);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        let wall = t.elapsed();
        let got: u64 = walk_bytes(&out);
        agg.push((target, got, wall));
    }
    let rate = |(_, b, w): &(&str, u64, Duration)| mb(*b) / secs(*w);
    rows.push(Row {
        name: format!("30 clients at once, {per} small files each (ferry tej get)"),
        ferry: format!(
            "through lb to m1+m2: {:.0} MB/s aggregate ({:.0} MB in {:.2} s)",
            rate(&agg[0]),
            mb(agg[0].1),
            secs(agg[0].2)
        ),
        peer: format!(
            "m1 direct: {:.0} MB/s aggregate ({:.0} MB in {:.2} s)",
            rate(&agg[1]),
            mb(agg[1].1),
            secs(agg[1].2)
        ),
        target: "report both".into(),
        verdict: "-".into(),
    });
    raw.insert(
        "thirty_clients".into(),
        json!({"lb_bytes": agg[0].1, "lb_s": secs(agg[0].2), "direct_bytes": agg[1].1, "direct_s": secs(agg[1].2)}),
    );
    drop(net);

    // Row 6: CJP2P over 20 ms / 1 % links, three sources against one, with ferry's default
    // request size (the downloader shrinks it per source as large answers go missing).
    let cj_mib = env_u64("BENCH_HOSTS_CJP2P_MIB", 16);
    let lossy = Some(Impair {
        delay: Duration::from_millis(20),
        loss: 0.01,
    });
    let mut specs = vec![
        HostSpec::new("origin", 1),
        HostSpec::new("m1", 11),
        HostSpec::new("m2", 12),
        HostSpec::new("client", 30),
    ];
    for sp in &mut specs[..3] {
        sp.impair = lossy;
    }
    let net = Net::build(&specs);
    let mut servers = Vec::new();
    let mut id = String::new();
    for h in ["origin", "m1", "m2"] {
        let dir = net.dir(h, "share");
        fixtures::write_file(&dir.join("payload.bin"), 42, cj_mib << 20);
        id = fixtures::hex(&fixtures::sha256_file(&dir.join("payload.bin")));
        servers.push(deploy::serve(&net, h, &dir));
    }
    let peer = |h: &str| format!("{}:{CJP2P_PORT}", net.ip(h));
    let (mut one, mut three) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        for (peers, v) in [
            (vec![peer("origin")], &mut one),
            (vec![peer("origin"), peer("m1"), peer("m2")], &mut three),
        ] {
            let out = net.dir("client", "cjp2p");
            let _ = std::fs::remove_dir_all(&out);
            let mut argv: Vec<String> = [FERRY, "cjp2p", "get", &id, "--out", s(&out)]
                .iter()
                .map(|a| a.to_string())
                .collect();
            for p in &peers {
                argv.push("--peer".into());
                argv.push(p.clone());
            }
            let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
            let (t, _) = timed(&net, "client", &refs);
            v.push(mb(cj_mib << 20) / secs(t));
        }
    }
    // Rates: the best is the largest, the median the upper middle.
    let best_med_rate = |v: &[f64]| {
        let mut w = v.to_vec();
        w.sort_by(|a, b| b.total_cmp(a));
        (w[0], w[w.len() / 2])
    };
    let (one_best, one_med) = best_med_rate(&one);
    let (three_best, three_med) = best_med_rate(&three);
    rows.push(Row {
        name: format!(
            "CJP2P {cj_mib} MiB over links of 20 ms (each way) and 1 % loss, default request size (best / median of 2)"
        ),
        ferry: format!("3 sources: {three_best:.1} MB/s / {three_med:.1} MB/s"),
        peer: format!("1 source: {one_best:.1} MB/s / {one_med:.1} MB/s"),
        target: "3 sources faster".into(),
        verdict: verdict(three_med > one_med),
    });
    raw.insert(
        "cjp2p_lossy".into(),
        json!({"one_source_mbps": one, "three_sources_mbps": three}),
    );
    drop(servers);
    drop(net);

    let load1 = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cmd = |argv: &[&str]| {
        std::process::Command::new(argv[0])
            .args(&argv[1..])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let mut md = String::new();
    md.push_str(&format!(
        "- date: {}\n- kernel (uname -r): {}\n- git commit: {}\n- data under: {}\n",
        cmd(&["date", "-u", "+%Y-%m-%d %H:%M:%S UTC"]),
        cmd(&["uname", "-r"]),
        cmd(&["git", "rev-parse", "--short=12", "HEAD"]),
        std::env::temp_dir().display()
    ));
    md.push_str(&format!(
        "- 1-minute load average at start / end: {} / {} (2 cores; other work on the machine lowers every number)\n\n",
        load0.split_whitespace().next().unwrap_or("?"),
        load1.split_whitespace().next().unwrap_or("?")
    ));
    md.push_str("| benchmark | ferry | peer (name: value) | target | pass/fail |\n");
    md.push_str("| --- | --- | --- | --- | --- |\n");
    for r in &rows {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.name, r.ferry, r.peer, r.target, r.verdict
        ));
    }
    println!("\n{md}");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("hosts.md"), &md);
    let _ = std::fs::write(
        dir.join("hosts.json"),
        serde_json::to_string_pretty(&Value::Object(raw)).unwrap_or_default(),
    );
}

/// Bytes of every file under `dir`.
fn walk_bytes(dir: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.filter_map(Result::ok) {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                if e.file_name() != ".ferry" {
                    n += walk_bytes(&e.path());
                }
            } else if t.is_file() {
                n += e.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    n
}
