//! ferry on several hosts: network namespaces joined by a bridge on this one machine (see
//! `net.rs`), the real `ferry` binary on each, HAProxy in front of two mirrors.
//!
//! Why a Rust test target and not a shell script: the hosts, their processes and links are
//! values whose `Drop` removes them, so a failing assertion (a panic) tears the network down
//! like a passing test does; Ctrl-C and SIGTERM run the same teardown from a handler; the
//! tests read `listening` lines and compare SHA-256 like `tests/it` does, and `cargo test`
//! (hence `make test` and CI) runs them with no extra step. They need root (CI runs as root)
//! and fail with a message without it.
//!
//! Out of scope here: timing targets. These tests assert completion and correctness;
//! `make bench-hosts` measures.

mod bench;
mod deploy;
mod fixtures;
mod net;
mod tools;
mod wire;

use std::time::{Duration, Instant};

use net::{leftover_namespaces, HostSpec, Net};
use wire::Impair;

pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

#[test]
fn harness_links_hosts_and_tears_down() {
    let mut specs = net::five_hosts();
    // The client's link is impaired: 20 ms each way.
    specs[4].impair = Some(Impair {
        delay: Duration::from_millis(20),
        loss: 0.0,
    });
    let net = Net::build(&specs);
    let run = net.run_name().to_string();
    let share = net.dir("origin", "share");
    std::fs::write(share.join("hello.txt"), b"hello from origin\n").unwrap();
    let bind = format!("{}:8000", net.ip("origin"));
    let mut origin = net.spawn(
        "origin",
        "tej-serve",
        &[
            FERRY,
            "tej",
            "serve",
            "--bind",
            &bind,
            "--root",
            share.to_str().unwrap(),
        ],
    );
    origin.listening(1, Duration::from_secs(30));
    let origin_pid = origin.pid();

    // Every host reaches origin by its address.
    for host in ["m1", "m2", "lb", "client"] {
        let out = net.run(
            host,
            &[FERRY, "tej", "list", "--addr", &bind, "--json"],
            Duration::from_secs(30),
        );
        assert!(
            out.status.success(),
            "{host}: tej list: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("hello.txt"));
    }

    // The impaired link delays both ways: a TCP handshake from the client takes at least two
    // crossings (a lower bound: it cannot flake).
    let t = Instant::now();
    let out = net.run(
        "client",
        &[
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/{}/8000", net.ip("origin")),
        ],
        Duration::from_secs(10),
    );
    assert!(
        out.status.success(),
        "connect from client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        t.elapsed() >= Duration::from_millis(40),
        "{:?}",
        t.elapsed()
    );

    // Nothing of the run lives in the namespace the test runs in: no address of the subnet,
    // no device of the run (a TCP probe proves nothing here: this machine's uplink accepts
    // connections to any address).
    let root_addrs = std::process::Command::new("ip")
        .args(["-o", "addr", "show"])
        .output()
        .unwrap();
    let root_addrs = String::from_utf8_lossy(&root_addrs.stdout);
    assert!(!root_addrs.contains("10.77.0."), "{root_addrs}");
    let root_links = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    let root_links = String::from_utf8_lossy(&root_links.stdout);
    for dev in ["h-origin", "h-client", "t-client", "br0"] {
        assert!(!root_links.contains(&format!(" {dev}:")), "{root_links}");
    }
    // The switch has no address either: it only bridges.
    let sw = net.namespaces()[0].clone();
    let sw_addrs = std::process::Command::new("ip")
        .args(["-n", &sw, "-o", "-4", "addr", "show"])
        .output()
        .unwrap();
    let sw_addrs = String::from_utf8_lossy(&sw_addrs.stdout);
    assert!(!sw_addrs.contains("10.77.0."), "{sw_addrs}");

    assert!(origin.is_alive());
    drop(origin);
    drop(net);
    assert_eq!(leftover_namespaces(&run), Vec::<String>::new());
    assert!(!pid_alive(origin_pid), "origin's server survived teardown");
}

#[test]
fn harness_tears_down_after_a_failed_test() {
    let seen = std::sync::Mutex::new(None);
    let r = std::panic::catch_unwind(|| {
        let net = Net::build(&[HostSpec::new("origin", 1), HostSpec::new("client", 30)]);
        let p = net.spawn("client", "sleeper", &["sh", "-c", "sleep 600 & sleep 600"]);
        *seen.lock().unwrap() = Some((net.run_name().to_string(), p.pid()));
        // The Proc is forgotten on purpose: only the network's teardown can stop it.
        std::mem::forget(p);
        panic!("a failing assertion");
    });
    assert!(r.is_err());
    let (run, pid) = seen.lock().unwrap().clone().expect("the network was built");
    assert_eq!(leftover_namespaces(&run), Vec::<String>::new());
    // The killed group is reaped by init or by this process; wait a moment for that.
    let deadline = Instant::now() + Duration::from_secs(5);
    while pid_alive(pid) && Instant::now() < deadline {
        // SAFETY: reap our own child if it is a zombie; WNOHANG never blocks.
        unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!pid_alive(pid), "a process of the failed test survived");
}

fn pid_alive(pid: u32) -> bool {
    // A zombie still answers kill(0): look at its state instead.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

#[test]
fn haproxy_on_lb_balances_and_skips_a_dead_mirror() {
    tools::ensure("haproxy", "haproxy");
    let net = Net::build(&net::five_hosts());
    let mut mirrors = Vec::new();
    for m in ["m1", "m2"] {
        let dir = net.dir(m, "mirror");
        std::fs::write(dir.join("same.txt"), b"same bytes on both mirrors\n").unwrap();
        let bind = format!("{}:8000", net.ip(m));
        let p = net.spawn(
            m,
            "tej-serve",
            &[
                FERRY,
                "tej",
                "serve",
                "--bind",
                &bind,
                "--root",
                dir.to_str().unwrap(),
            ],
        );
        p.listening(1, Duration::from_secs(30));
        mirrors.push(p);
    }
    let cfg_path = net.dir("lb", "etc").join("haproxy.cfg");
    let cfg = tools::haproxy_config(
        net.ip("lb"),
        &[("m1", net.ip("m1")), ("m2", net.ip("m2"))],
        &[tools::Service {
            name: "tej",
            port: 8000,
        }],
    );
    std::fs::write(&cfg_path, cfg).unwrap();
    tools::haproxy_check(&cfg_path);
    let _lb = net.spawn(
        "lb",
        "haproxy",
        &["haproxy", "-db", "-f", cfg_path.to_str().unwrap()],
    );
    let front = format!("{}:8000", net.ip("lb"));
    let list = |what: &str| {
        let ok = fixtures::wait_until(Duration::from_secs(15), || {
            let out = net.run(
                "client",
                &[FERRY, "tej", "list", "--addr", &front, "--json"],
                Duration::from_secs(30),
            );
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("same.txt")
        });
        assert!(ok.is_some(), "client could not list through lb ({what})");
    };
    list("both mirrors up");
    mirrors[0].kill();
    // Every later connection lands on m2, whether or not the health check noticed yet.
    for _ in 0..5 {
        let out = net.run(
            "client",
            &[FERRY, "tej", "list", "--addr", &front, "--json"],
            Duration::from_secs(30),
        );
        assert!(
            out.status.success(),
            "list with m1 dead: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `ferry ARGS` on `host`, expected to succeed; its stdout.
fn ferry_ok(net: &Net, host: &str, args: &[&str]) -> String {
    let mut argv = vec![FERRY];
    argv.extend_from_slice(args);
    let out = net.run(host, &argv, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "{host}: ferry {args:?}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn client_fetches_the_catalog_through_lb_while_a_mirror_dies() {
    let mut specs = net::five_hosts();
    // The mirrors send at 200 Mbit/s, so the kill lands while the big file is on its way.
    for s in &mut specs[1..3] {
        s.rate_mbit = Some(200);
    }
    let net = Net::build(&specs);
    let share = net.dir("origin", "share");
    fixtures::write_file(&share.join("big.png"), 7, 40 << 20);
    for i in 0..20u64 {
        fixtures::write_file(&share.join(format!("img{i:02}.png")), i, 10_000 + i * 3000);
    }
    let mut d = deploy::Deployment::start(&net, Duration::from_secs(1));
    let ca = deploy::certs().join("ca.pem");
    let want = fixtures::tree(&share);

    // JTP: the whole catalog through lb; the mirror sending it dies mid-file.
    let out = net.dir("client", "jtp");
    let front = d.front(deploy::JTP_PORT);
    let mut client = net.spawn(
        "client",
        "jtp-get",
        &[
            FERRY,
            "jtp",
            "get",
            "--addr",
            &front,
            "--cert",
            ca.to_str().unwrap(),
            "--server-name",
            "localhost",
            "--out",
            out.to_str().unwrap(),
            "--retries",
            "5",
            "--json",
        ],
    );
    let victim = d.wait_serving_mirror(deploy::JTP_PORT, 4 << 20, &mut client);
    d.kill_mirror(victim);
    let res = client.wait_output(Duration::from_secs(120));
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "jtp get through lb: {err}");
    assert!(
        err.contains("asking again"),
        "the kill did not interrupt: {err}"
    );
    assert_eq!(fixtures::tree(&out), want, "JTP through lb: bytes differ");

    // The dead mirror comes back; then TEJ: a sync through lb, and the other mirror dies.
    d.restart_mirror(victim);
    let out = net.dir("client", "tej");
    let front = d.front(deploy::TEJ_PORT);
    let mut client = net.spawn(
        "client",
        "sync",
        &[
            FERRY,
            "sync",
            &format!("tej://{front}"),
            out.to_str().unwrap(),
            "--retries",
            "5",
            "--parallel",
            "1",
            "--json",
        ],
    );
    let victim = d.wait_serving_mirror(deploy::TEJ_PORT, 4 << 20, &mut client);
    d.kill_mirror(victim);
    let res = client.wait_output(Duration::from_secs(120));
    assert!(
        res.status.success(),
        "sync through lb: {}\n{}",
        String::from_utf8_lossy(&res.stdout),
        String::from_utf8_lossy(&res.stderr)
    );
    assert_eq!(fixtures::tree(&out), want, "TEJ through lb: bytes differ");
}

#[test]
fn a_change_on_origin_reaches_both_mirrors_and_the_client_through_lb() {
    let net = Net::build(&net::five_hosts());
    let share = net.dir("origin", "share");
    for i in 0..30u64 {
        fixtures::write_file(&share.join(format!("f{i:02}.dat")), i, 1000 + i * 777);
    }
    let period = Duration::from_secs(1);
    let d = deploy::Deployment::start(&net, period);
    // The first runs are logged (the folders matched just before their summaries were written).
    for log in &d.sync_logs {
        let logged = fixtures::wait_until(Duration::from_secs(30), || {
            !deploy::sync_runs(log).is_empty()
        });
        assert!(logged.is_some(), "no sync run was logged");
    }
    let runs_before: Vec<usize> = d
        .sync_logs
        .iter()
        .map(|l| deploy::sync_runs(l).len())
        .collect();

    // Added, changed, renamed, deleted.
    fixtures::write_file_atomic(&share.join("added-1.dat"), 100, 5000);
    fixtures::write_file_atomic(&share.join("added-2.dat"), 101, 7000);
    fixtures::write_file_atomic(&share.join("f01.dat"), 102, 3000);
    std::fs::rename(share.join("f02.dat"), share.join("renamed.dat")).unwrap();
    std::fs::remove_file(share.join("f03.dat")).unwrap();
    let took = d
        .wait_mirrors_match(Duration::from_secs(30))
        .expect("the change never reached both mirrors");
    eprintln!(
        "hosts: the change reached both mirrors in {:.2} s (sync period {:.0} s)",
        took.as_secs_f64(),
        period.as_secs_f64()
    );

    // Each mirror fetched only the new content; the rename was done locally. (The run that
    // placed the files writes its summary after placing them: wait for a run with nothing left
    // to do after it.)
    for (log, before) in d.sync_logs.iter().zip(&runs_before) {
        let settled = fixtures::wait_until(Duration::from_secs(30), || {
            deploy::sync_runs(log)[*before..]
                .iter()
                .any(|r| r["unchanged"] == 31 && r["fetched"] == 0 && r["moved"] == 0)
        });
        assert!(settled.is_some(), "{:?}", deploy::sync_runs(log));
        let runs = deploy::sync_runs(log);
        let after = &runs[*before..];
        let sum = |k: &str| {
            after
                .iter()
                .map(|r| r[k].as_u64().unwrap_or(0))
                .sum::<u64>()
        };
        assert_eq!(sum("bytes"), 5000 + 7000 + 3000, "{after:?}");
        assert_eq!(sum("moved"), 1, "{after:?}");
        // 1, or 2 when a run listed origin between the halves of the rename (a live catalog
        // drops a name at once and publishes the new one once it settled): the content then
        // waited in the mirror's attic and was moved back, still without a transfer.
        assert!((1..=2).contains(&sum("deleted")), "{after:?}");
        assert_eq!(sum("failed"), 0, "{after:?}");
    }

    // Both mirrors' servers list the new catalog (each follows its folder live); then the
    // client sees it through lb, whichever mirror answers.
    assert!(
        d.wait_mirrors_serve_origin(Duration::from_secs(20))
            .is_some(),
        "a mirror's server never listed the new catalog"
    );
    let want = fixtures::tree(&share);
    let front = d.front(deploy::TEJ_PORT);
    let w: Vec<(String, String)> = want
        .iter()
        .map(|(n, h)| (n.clone(), fixtures::hex(h)))
        .collect();
    assert_eq!(deploy::tej_listing(&net, "client", &front), w);
    let out = net.dir("client", "copy");
    ferry_ok(
        &net,
        "client",
        &[
            "sync",
            &format!("tej://{front}"),
            out.to_str().unwrap(),
            "--delete",
        ],
    );
    assert_eq!(fixtures::tree(&out), want);
}

#[test]
fn cjp2p_download_from_three_sources_over_lossy_links_completes_verified() {
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
    for s in &mut specs[..3] {
        s.impair = lossy;
    }
    let net = Net::build(&specs);
    // The sources hold the file already (the mirrors got it by sync before the links degraded).
    let mut sources = Vec::new();
    let mut sha = String::new();
    for h in ["origin", "m1", "m2"] {
        let dir = net.dir(h, "share");
        fixtures::write_file(&dir.join("payload.bin"), 42, 8 << 20);
        sha = fixtures::hex(&fixtures::sha256_file(&dir.join("payload.bin")));
        sources.push(deploy::serve(&net, h, &dir));
    }
    let out = net.dir("client", "out");
    let peers: Vec<String> = ["origin", "m1", "m2"]
        .iter()
        .map(|h| format!("{}:{}", net.ip(h), deploy::CJP2P_PORT))
        .collect();
    // ferry's default request size (32 KiB): an answer that large is a 30-fragment datagram on
    // these 1500-byte links, and at 1 % loss a quarter of them lose a fragment, whose siblings
    // wait in the client's reassembly queue (4 MiB, net.ipv4.ipfrag_high_thresh) for 30 s; once
    // that queue is full the kernel drops every fragment. The downloader must notice that large
    // answers go missing and shrink its requests to each source before that happens.
    let mut args = vec![
        FERRY,
        "cjp2p",
        "get",
        &sha,
        "--out",
        out.to_str().unwrap(),
        "--json",
        "-v",
    ];
    for p in &peers {
        args.extend_from_slice(&["--peer", p]);
    }
    let t = Instant::now();
    let res = net.run("client", &args, Duration::from_secs(120));
    assert!(
        res.status.success(),
        "cjp2p get: {}\n{}",
        String::from_utf8_lossy(&res.stdout),
        String::from_utf8_lossy(&res.stderr)
    );
    eprintln!(
        "hosts: 8 MiB from 3 sources over 20 ms / 1 % in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let j: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
    assert_eq!(j["verified"], true);
    let got = out.join(&sha);
    assert_eq!(fixtures::hex(&fixtures::sha256_file(&got)), sha);
}

#[test]
fn readme_shows_the_haproxy_configuration_the_tests_use() {
    let ip = |o| std::net::Ipv4Addr::new(net::SUBNET[0], net::SUBNET[1], net::SUBNET[2], o);
    let cfg = tools::haproxy_config(
        ip(20),
        &[("m1", ip(11)), ("m2", ip(12))],
        &[
            tools::Service {
                name: "tej",
                port: deploy::TEJ_PORT,
            },
            tools::Service {
                name: "jtp",
                port: deploy::JTP_PORT,
            },
        ],
    );
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(
        readme.contains(&format!("```haproxy\n{cfg}```")),
        "README's HAProxy block differs from the tests' configuration:\n{cfg}"
    );
}
