//! Outside tools the hosts run: HAProxy (and rsync for the benchmark), installed from Debian
//! when missing, and the HAProxy configuration the tests use (the README shows the same one).

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// Makes sure `tool` is on PATH, installing Debian package `package` if it is not. One install
/// at a time in this process; apt's own lock (waited for) covers other processes.
pub fn ensure(tool: &str, package: &str) {
    static APT: Mutex<()> = Mutex::new(());
    let _one = APT.lock().unwrap_or_else(|p| p.into_inner());
    if has(tool) {
        return;
    }
    eprintln!("hosts: {tool} is missing; installing Debian package {package}");
    let install = || {
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "-o",
                "DPkg::Lock::Timeout=300",
                package,
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
    };
    let mut out = install();
    if !out.as_ref().is_ok_and(|o| o.status.success()) {
        // Package lists may be missing on a fresh image.
        let _ = Command::new("apt-get")
            .args(["update", "-q", "-o", "DPkg::Lock::Timeout=300"])
            .stdin(Stdio::null())
            .output();
        out = install();
    }
    match out {
        Ok(o) if o.status.success() && has(tool) => {}
        Ok(o) => panic!(
            "hosts: `apt-get install -y {package}` failed, and these tests need {tool}:\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("hosts: cannot run apt-get to install {package} ({tool} is needed): {e}"),
    }
}

fn has(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One TCP service behind the balancer: the port it listens on at `lb` and at every mirror.
pub struct Service<'a> {
    pub name: &'a str,
    pub port: u16,
}

/// The HAProxy configuration of the tests and of the README's "Running mirrors": TCP mode
/// (TLS passes through untouched), bytes moved by splice(2) where the kernel can, least
/// connections, a health check every 500 ms (a mirror is out after 2 failures, back after 2
/// successes), a refused connection retried on another mirror (`option redispatch`).
pub fn haproxy_config(lb: Ipv4Addr, mirrors: &[(&str, Ipv4Addr)], services: &[Service]) -> String {
    let mut c = String::from(
        "global\n    maxconn 4096\n\n\
         defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 60s\n    \
         timeout server 60s\n    retries 3\n    option redispatch\n    \
         option splice-auto\n",
    );
    for s in services {
        c.push_str(&format!(
            "\nfrontend {name}\n    bind {lb}:{port}\n    default_backend {name}_mirrors\n\n\
             backend {name}_mirrors\n    balance leastconn\n",
            name = s.name,
            port = s.port
        ));
        for (m, ip) in mirrors {
            c.push_str(&format!(
                "    server {m} {ip}:{port} check inter 500ms fall 2 rise 2\n",
                port = s.port
            ));
        }
    }
    c
}

/// Checks a configuration with `haproxy -c`.
pub fn haproxy_check(cfg: &Path) {
    let out = Command::new("haproxy")
        .args(["-c", "-q", "-f"])
        .arg(cfg)
        .output()
        .expect("run haproxy -c");
    assert!(
        out.status.success(),
        "hosts: haproxy rejects {}:\n{}",
        cfg.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}
