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
