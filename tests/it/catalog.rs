//! The live catalog through the real binary: a file put into a served folder after start is
//! served by every protocol without a flag or a signal, a `chmod` or a new hard link keeps a
//! file serving, and a deleted file leaves every listing.
//!
//! The catalog publishes within a second; these tests retry for up to 15 s (never asserting a
//! time, which a loaded machine would make flaky) and fail with what they last saw.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::harness::{ferry, pseudo_random, sha256_file, Server, TempDir};

/// Timeout of one client command.
const T: Duration = Duration::from_secs(30);

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn sha(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Calls `attempt` until it gives `Ok` or 15 s pass; panics with the last error.
fn eventually<R>(what: &str, mut attempt: impl FnMut() -> Result<R, String>) -> R {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match attempt() {
            Ok(r) => return r,
            Err(e) if Instant::now() >= deadline => panic!("{what}: still failing: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// `ferry serve DIR` on loopback port 0 for all three protocols (JTP without TLS).
fn serve_all(dir: &Path) -> Server {
    Server::start(
        &[
            "serve",
            p(dir),
            "--jtp-bind",
            "127.0.0.1:0",
            "--tej-bind",
            "127.0.0.1:0",
            "--cjp2p-bind",
            "127.0.0.1:0",
            "--no-tls",
        ],
        3,
    )
}

/// The names `ferry tej list` prints.
fn tej_names(addr: &str) -> Result<Vec<String>, String> {
    let o = ferry(&["tej", "list", "--addr", addr, "--json"], T);
    if !o.status.success() {
        return Err(format!("tej list: {}", stderr(&o)));
    }
    names_of(&o)
}

/// The names `ferry jtp list --no-tls` prints (exit 1 means an empty catalog).
fn jtp_names(addr: &str) -> Result<Vec<String>, String> {
    let o = ferry(&["jtp", "list", "--no-tls", "--addr", addr, "--json"], T);
    match o.status.code() {
        Some(0) => names_of(&o),
        Some(1) => Ok(Vec::new()),
        _ => Err(format!("jtp list: {}", stderr(&o))),
    }
}

fn names_of(o: &Output) -> Result<Vec<String>, String> {
    let v: Value = serde_json::from_slice(&o.stdout).map_err(|e| format!("json: {e}"))?;
    Ok(v.as_array()
        .ok_or("not an array")?
        .iter()
        .filter_map(|e| e["name"].as_str().map(str::to_owned))
        .collect())
}

/// `ferry cjp2p get ID --peer PEER` into a fresh folder; the bytes' SHA-256 must be `id`.
fn cjp2p_get(id: &[u8; 32], peer: &str) -> Result<(), String> {
    let out = TempDir::new("cat-cj-out");
    let idh = hex(id);
    let o = ferry(
        &[
            "cjp2p",
            "get",
            &idh,
            "--peer",
            peer,
            "--out",
            p(out.path()),
            "--timeout",
            "3",
        ],
        T,
    );
    if !o.status.success() {
        return Err(format!("cjp2p get: exit {:?}: {}", o.status, stderr(&o)));
    }
    let got = sha256_file(&out.join(&idh));
    if &got != id {
        return Err(format!("cjp2p get: wrong bytes (sha256 {})", hex(&got)));
    }
    Ok(())
}

/// `ferry tej get NAME` into a fresh folder; the bytes' SHA-256 must be `want`.
fn tej_get(name: &str, want: &[u8; 32], addr: &str) -> Result<(), String> {
    let out = TempDir::new("cat-tej-out");
    let o = ferry(
        &["tej", "get", "--addr", addr, "--out", p(out.path()), name],
        T,
    );
    if !o.status.success() {
        return Err(format!(
            "tej get {name}: exit {:?}: {}",
            o.status,
            stderr(&o)
        ));
    }
    let got = sha256_file(&out.join(name));
    if &got != want {
        return Err(format!("tej get {name}: wrong bytes"));
    }
    Ok(())
}

#[test]
fn cjp2p_node_serves_a_file_copied_in_after_start() {
    let share = TempDir::new("cat-cj-share");
    let src = TempDir::new("cat-cj-src");
    let node = Server::start(
        &[
            "cjp2p",
            "node",
            "--bind",
            "127.0.0.1:0",
            "--root",
            p(share.path()),
        ],
        1,
    );
    let peer = node.addr("cjp2p");
    let data = pseudo_random(801, 300_000);
    std::fs::write(src.join("late.bin"), &data).unwrap();
    std::fs::copy(src.join("late.bin"), share.join("late.bin")).unwrap();
    eventually("cjp2p get of a file copied in after start", || {
        cjp2p_get(&sha(&data), &peer)
    });
}

#[test]
fn serve_lists_a_file_moved_in_on_tej_and_jtp_and_forgets_it_once_deleted() {
    let share = TempDir::new("cat-serve-share");
    let staging = TempDir::new("cat-serve-staging");
    std::fs::write(share.join("first.png"), pseudo_random(803, 1000)).unwrap();
    let s = serve_all(share.path());
    let (tej, jtp) = (s.addr("tej"), s.addr("jtp"));
    std::fs::write(staging.join("moved.png"), pseudo_random(805, 2000)).unwrap();
    std::fs::rename(staging.join("moved.png"), share.join("moved.png")).unwrap();
    let want = ["first.png", "moved.png"];
    eventually("tej list shows moved.png", || match tej_names(&tej)? {
        n if n == want => Ok(()),
        n => Err(format!("tej list: {n:?}")),
    });
    eventually("jtp list shows moved.png", || match jtp_names(&jtp)? {
        n if n == want => Ok(()),
        n => Err(format!("jtp list: {n:?}")),
    });
    std::fs::remove_file(share.join("moved.png")).unwrap();
    eventually("tej list forgets moved.png", || match tej_names(&tej)? {
        n if n == ["first.png"] => Ok(()),
        n => Err(format!("tej list: {n:?}")),
    });
    eventually("jtp list forgets moved.png", || match jtp_names(&jtp)? {
        n if n == ["first.png"] => Ok(()),
        n => Err(format!("jtp list: {n:?}")),
    });
}

#[test]
fn chmod_and_hard_links_keep_a_file_serving_over_cjp2p_and_tej() {
    use std::os::unix::fs::PermissionsExt;
    let share = TempDir::new("cat-meta-share");
    let elsewhere = TempDir::new("cat-meta-elsewhere");
    let data = pseudo_random(807, 100_000);
    let id = sha(&data);
    std::fs::write(share.join("a.png"), &data).unwrap();
    let s = serve_all(share.path());
    let (tej, cj) = (s.addr("tej"), s.addr("cjp2p"));
    tej_get("a.png", &id, &tej).unwrap();
    cjp2p_get(&id, &cj).unwrap();

    // chmod: only the ctime moves.
    std::fs::set_permissions(share.join("a.png"), std::fs::Permissions::from_mode(0o600)).unwrap();
    eventually("tej get after chmod", || tej_get("a.png", &id, &tej));
    eventually("cjp2p get after chmod", || cjp2p_get(&id, &cj));

    // A second name in the folder (what the CJP2P reference node does to files it shares).
    std::fs::hard_link(share.join("a.png"), share.join("b.png")).unwrap();
    eventually("tej get of the new link", || tej_get("b.png", &id, &tej));
    eventually("tej get after ln", || tej_get("a.png", &id, &tej));
    eventually("cjp2p get after ln", || cjp2p_get(&id, &cj));

    // A link made in another folder announces nothing here; serving must still come back.
    std::fs::hard_link(share.join("a.png"), elsewhere.join("x.png")).unwrap();
    eventually("cjp2p get after a link elsewhere", || cjp2p_get(&id, &cj));
    eventually("tej get after a link elsewhere", || {
        tej_get("a.png", &id, &tej)
    });
    let names = tej_names(&tej).unwrap();
    assert_eq!(names, ["a.png", "b.png"]);
}
