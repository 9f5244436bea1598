//! Issue 15 through the real binary: what a local user who can write into a served or output
//! folder, or a peer, must not be able to make ferry do.
//!
//! - a symlink swapped between a file inside the folder and one outside (or `.ferry/tls/key.pem`)
//!   while rescans run: the outside bytes are never served (item 2);
//! - a FIFO swapped in for a catalog file: no worker, no CJP2P node and no shutdown hangs
//!   (item 7);
//! - a `.ferry` that is a link or writable by others, planted index temporaries, a planted
//!   `OUT/.ferry/ingest/cjp2p/<id>.part` link: nothing outside is written and the error says
//!   why (item 3);
//! - a soft limit of 1,024 descriptors and 1,500 files: one LIST_AND_GET serves them all and
//!   the server still accepts (item 6);
//! - `ferry certs --out` over planted links and old modes (item 13), and a rate-limited TLS
//!   peer: counted before any TLS work (item 13).
//!
//! Every wait is bounded (clients by the harness's timeout, servers by `wait_exit`); nothing
//! asserts a time.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::harness::{ferry, pseudo_random, sha256_file, Server, TempDir, FERRY};

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
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// `ferry serve DIR EXTRA...` on loopback port 0 for JTP, TEJ and CJP2P.
fn serve_all(dir: &Path, extra: &[&str]) -> Server {
    let mut args = vec![
        "serve",
        p(dir),
        "--jtp-bind",
        "127.0.0.1:0",
        "--tej-bind",
        "127.0.0.1:0",
        "--cjp2p-bind",
        "127.0.0.1:0",
        // FastDP and filestorage listen on fixed defaults (5423, 9000, a Unix socket with a
        // lock): off, so parallel tests do not fight over them.
        "--fastdp-bind",
        "off",
        "--filestorage-bind",
        "off",
        "--filestorage-unix",
        "off",
    ];
    args.extend_from_slice(extra);
    Server::start(&args, 3)
}

/// The names `ferry tej list` prints.
fn tej_names(addr: &str) -> Result<Vec<String>, String> {
    let o = ferry(&["tej", "list", "--addr", addr, "--json"], T);
    if !o.status.success() {
        return Err(format!("tej list: {}", stderr(&o)));
    }
    let v: Value = serde_json::from_slice(&o.stdout).map_err(|e| format!("json: {e}"))?;
    Ok(v.as_array()
        .ok_or("not an array")?
        .iter()
        .filter_map(|e| e["name"].as_str().map(str::to_owned))
        .collect())
}

/// `ferry tej get NAME` into a fresh folder: the bytes, or None if the get failed.
fn tej_get(name: &str, addr: &str) -> Option<Vec<u8>> {
    let out = TempDir::new("sec-tej-out");
    let o = ferry(
        &["tej", "get", "--addr", addr, "--out", p(out.path()), name],
        T,
    );
    o.status
        .success()
        .then(|| std::fs::read(out.join(name)).expect("tej get exited 0 without the file"))
}

/// Swaps `dir/name` atomically to a new symlink to `target` (made under a dot-name first).
fn swap_link(dir: &Path, name: &str, target: &Path) {
    let tmp = dir.join(format!(".swap-{name}"));
    let _ = std::fs::remove_file(&tmp);
    symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// The symlink race of issue 15 item 2 against `ferry serve` with `extra` flags: `x.bin` is
/// swapped between links to files inside the folder and links to a mode-600 file outside and
/// to `.ferry/tls/key.pem`, while rescans run and a client keeps fetching `x.bin` over TEJ.
fn symlink_race(tag: &str, extra: &[&str]) {
    let root = TempDir::new(tag);
    let share = root.join("share");
    std::fs::create_dir(&share).unwrap();
    let public = pseudo_random(1, 3000);
    std::fs::write(share.join("inside.bin"), &public).unwrap();
    // A second inside target, so each rescan finds a new stamp and hashes x.bin again (the
    // window in which a swap used to be hashed, then served).
    std::fs::write(share.join("inside2.bin"), &public).unwrap();
    let secret_path = root.join("secret.bin");
    std::fs::write(&secret_path, b"SECRET: never to be served").unwrap();
    std::fs::set_permissions(&secret_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    symlink("inside.bin", share.join("x.bin")).unwrap();
    // TLS on JTP: the server generates .ferry/tls/key.pem, the other forbidden target.
    let mut server = serve_all(&share, extra);
    let tej = server.addr("tej");
    let key_path = share.join(".ferry/tls/key.pem");
    assert!(key_path.is_file(), "the TLS key was generated");
    let forbidden = [
        std::fs::read(&secret_path).unwrap(),
        std::fs::read(&key_path).unwrap(),
    ];
    assert_eq!(tej_get("x.bin", &tej).as_deref(), Some(&public[..]));

    // Deterministic half: each outside or hidden target, one at a time, with a rescan.
    let targets: Vec<PathBuf> = vec![
        secret_path.clone(),
        PathBuf::from("../secret.bin"),
        key_path.clone(),
        PathBuf::from(".ferry/tls/key.pem"),
    ];
    for target in &targets {
        swap_link(&share, "x.bin", target);
        server.signal(libc::SIGHUP);
        eventually(
            &format!("x.bin -> {target:?} leaves the listing"),
            || match tej_names(&tej)?.contains(&"x.bin".to_owned()) {
                false => Ok(()),
                true => Err("still listed".into()),
            },
        );
        if let Some(got) = tej_get("x.bin", &tej) {
            assert!(!forbidden.contains(&got), "x.bin -> {target:?} served it");
            panic!("x.bin -> {target:?} served {} bytes", got.len());
        }
    }

    // Racing half: an attacker swaps the link as fast as it can while rescans run and a client
    // keeps fetching x.bin.
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = {
        let (stop, share) = (stop.clone(), share.clone());
        let mut all = Vec::new();
        for (i, t) in targets.iter().enumerate() {
            let inside = if i % 2 == 0 {
                "inside.bin"
            } else {
                "inside2.bin"
            };
            all.push(PathBuf::from(inside));
            all.push(t.clone());
        }
        std::thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                swap_link(&share, "x.bin", &all[i % all.len()]);
                i += 1;
            }
            i
        })
    };
    let pid = server.child.id() as i32;
    let hupper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: kill(2) of our own child.
                unsafe { libc::kill(pid, libc::SIGHUP) };
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let (mut served, fetches) = (0, 150);
    let mut leaked = None;
    for _ in 0..fetches {
        if let Some(got) = tej_get("x.bin", &tej) {
            if got != public {
                leaked = Some(got);
                break;
            }
            served += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = attacker.join().unwrap();
    hupper.join().unwrap();
    if let Some(got) = leaked {
        panic!(
            "{tag}: x.bin served {} bytes that are not inside.bin's{}",
            got.len(),
            if forbidden.contains(&got) {
                " but the outside or hidden file's"
            } else {
                ""
            }
        );
    }
    eprintln!("{tag}: {swaps} swaps, served {served} of {fetches} fetches, always inside.bin's");
    assert!(server.is_alive(), "{}", server.stderr_text());
    assert!(!server.stderr_text().contains("panicked"));
}

#[test]
fn a_symlink_swapped_out_of_the_folder_during_rescans_never_serves_the_outside_file() {
    // SIGHUP rescans only (the entry stays listed between them: the window of the old bug).
    symlink_race("sec-race-hup", &["--no-follow"]);
}

#[test]
fn a_symlink_swapped_out_of_the_folder_under_the_live_follower_never_serves_the_outside_file() {
    symlink_race("sec-race-live", &[]);
}

#[test]
fn a_fifo_swapped_in_for_a_catalog_file_hangs_no_worker_node_or_shutdown() {
    let share = TempDir::new("sec-fifo");
    let a = pseudo_random(2, 5000);
    let f = pseudo_random(3, 7000);
    std::fs::write(share.join("a.png"), &a).unwrap();
    std::fs::write(share.join("f.png"), &f).unwrap();
    // Not following the folder: the swapped entry stays listed until SIGHUP, so every
    // protocol is asked for it while it is a FIFO.
    let mut server = serve_all(share.path(), &["--no-tls", "--no-follow"]);
    let (tej, jtp, cj) = (server.addr("tej"), server.addr("jtp"), server.addr("cjp2p"));
    std::fs::remove_file(share.join("f.png")).unwrap();
    mkfifo(&share.join(".fifo"));
    std::fs::rename(share.join(".fifo"), share.join("f.png")).unwrap();

    // TEJ: refused at once (before the fix the worker blocked in open(2) for good).
    assert_eq!(tej_get("f.png", &tej), None);
    assert_eq!(tej_get("a.png", &tej).as_deref(), Some(&a[..]));
    // JTP: the whole catalog; the FIFO is left out, the rest is served.
    let out = TempDir::new("sec-fifo-jtp");
    let o = ferry(
        &[
            "jtp",
            "get",
            "--list-and-get",
            "--no-tls",
            "--addr",
            &jtp,
            "--out",
            p(out.path()),
        ],
        T,
    );
    assert!(
        matches!(o.status.code(), Some(0) | Some(1)),
        "jtp get: {}",
        stderr(&o)
    );
    assert_eq!(sha256_file(&out.join("a.png")), sha(&a));
    assert!(!out.join("f.png").exists());
    // CJP2P: asked for the FIFO's id, then for a.png: the node still answers.
    let cj_get = |id: &[u8; 32]| {
        let out = TempDir::new("sec-fifo-cj");
        let idh = hex(id);
        let o = ferry(
            &[
                "cjp2p",
                "get",
                &idh,
                "--peer",
                &cj,
                "--out",
                p(out.path()),
                "--timeout",
                "3",
            ],
            T,
        );
        o.status.success().then(|| sha256_file(&out.join(&idh)))
    };
    assert_eq!(cj_get(&sha(&f)), None);
    assert_eq!(cj_get(&sha(&a)), Some(sha(&a)));
    // A rescan drops the FIFO without opening it.
    server.signal(libc::SIGHUP);
    eventually("f.png leaves the listing", || {
        match tej_names(&tej)? == ["a.png"] {
            true => Ok(()),
            false => Err("f.png still listed".into()),
        }
    });
    // And shutdown completes.
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(20));
    assert!(
        status.is_some(),
        "ferry serve did not stop within 20 s of SIGTERM; stderr:\n{}",
        server.stderr_text()
    );
}

#[test]
fn a_state_folder_that_is_a_link_or_writable_by_others_stops_the_server_with_a_clear_error() {
    let root = TempDir::new("sec-state");
    let share = root.join("share");
    let elsewhere = root.join("elsewhere");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(share.join("a.bin"), b"a").unwrap();
    symlink(&elsewhere, share.join(".ferry")).unwrap();
    let o = ferry(
        &["tej", "serve", "--root", p(&share), "--bind", "127.0.0.1:0"],
        T,
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("is a symbolic link"), "{}", stderr(&o));
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);

    std::fs::remove_file(share.join(".ferry")).unwrap();
    std::fs::create_dir(share.join(".ferry")).unwrap();
    std::fs::set_permissions(share.join(".ferry"), std::fs::Permissions::from_mode(0o775)).unwrap();
    let o = ferry(
        &[
            "jtp",
            "serve",
            "--images",
            p(&share),
            "--bind",
            "127.0.0.1:0",
        ],
        T,
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("chmod go-w"), "{}", stderr(&o));
    assert_eq!(std::fs::read_dir(share.join(".ferry")).unwrap().count(), 0);
}

#[test]
fn planted_index_temporaries_are_never_written_through_and_the_index_is_still_saved() {
    let root = TempDir::new("sec-index");
    let share = root.join("share");
    std::fs::create_dir_all(share.join(".ferry")).unwrap();
    std::fs::set_permissions(share.join(".ferry"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(share.join("a.bin"), b"some bytes").unwrap();
    let victim = root.join("victim");
    std::fs::write(&victim, b"keep me").unwrap();
    // The shell plants .ferry/.index.tmp.<its pid>.<n> links, then becomes ferry (same pid).
    let script = r#"for n in 0 1 2 3 4 5 6 7; do ln -s "$2" "$1/.ferry/.index.tmp.$$.$n" || exit 9; done; exec "$3" index "$1""#;
    let o = Command::new("sh")
        .args(["-c", script, "sh", p(&share), p(&victim), FERRY])
        .output()
        .unwrap();
    assert!(o.status.success(), "ferry index: {}", stderr(&o));
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
    let index = std::fs::symlink_metadata(share.join(".ferry/index")).unwrap();
    assert!(index.is_file(), "the index was saved under its own name");
    // The planted links are still links to the victim (not replaced, not followed).
    let planted = std::fs::read_dir(share.join(".ferry"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(".index.tmp."))
        .filter(|e| e.file_type().unwrap().is_symlink())
        .count();
    assert_eq!(planted, 8);
}

#[test]
fn a_planted_part_link_in_the_output_folder_is_refused_and_its_target_untouched() {
    let root = TempDir::new("sec-part");
    let share = root.join("share");
    std::fs::create_dir(&share).unwrap();
    let data = pseudo_random(4, 100_000);
    std::fs::write(share.join("d.bin"), &data).unwrap();
    let node = Server::start(
        &[
            "cjp2p",
            "node",
            "--bind",
            "127.0.0.1:0",
            "--root",
            p(&share),
        ],
        1,
    );
    let peer = node.addr("cjp2p");
    let id = hex(&sha(&data));
    let out = root.join("out");
    let work = out.join(".ferry/ingest/cjp2p");
    std::fs::create_dir_all(&work).unwrap();
    for d in [out.join(".ferry"), out.join(".ferry/ingest"), work.clone()] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let victim = root.join("victim");
    std::fs::write(&victim, b"keep me").unwrap();
    symlink(&victim, work.join(format!("{id}.part"))).unwrap();
    let get = |out: &Path| {
        ferry(
            &[
                "cjp2p",
                "get",
                &id,
                "--peer",
                &peer,
                "--out",
                p(out),
                "--timeout",
                "3",
            ],
            T,
        )
    };
    let o = get(&out);
    assert!(!o.status.success(), "cjp2p get wrote through the link");
    assert!(stderr(&o).contains("is a symbolic link"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
    assert!(!out.join(&id).exists());

    // An output folder whose .ferry others may write: refused, nothing written there.
    let out2 = root.join("out2");
    std::fs::create_dir_all(out2.join(".ferry")).unwrap();
    std::fs::set_permissions(out2.join(".ferry"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let o = get(&out2);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("chmod go-w"), "{}", stderr(&o));
    assert_eq!(std::fs::read_dir(out2.join(".ferry")).unwrap().count(), 0);

    // And the same download into a clean folder works.
    let out3 = root.join("out3");
    let o = get(&out3);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(sha256_file(&out3.join(&id)), sha(&data));
}

/// `ferry ARGS` with RLIMIT_NOFILE set to `soft`/`hard` in the child before exec, reading its
/// `listening` lines as [`Server::start`] does.
fn start_limited(args: &[&str], soft: u64, hard: u64) -> Server {
    let mut cmd = Command::new(FERRY);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure only calls setrlimit(2), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: soft as libc::rlim_t,
                rlim_max: hard as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn ferry");
    let log = Arc::new(std::sync::Mutex::new(String::new()));
    let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let log2 = log.clone();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stderr);
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            log2.lock().unwrap().push_str(&line);
            line.clear();
        }
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(l) => l,
        Err(_) => {
            let _ = child.kill();
            panic!(
                "ferry {args:?} printed no listening line: {}",
                log.lock().unwrap()
            );
        }
    };
    let mut it = line.split_whitespace();
    assert_eq!(it.next(), Some("listening"), "{line}");
    let listening = vec![(
        it.next().unwrap_or("").to_owned(),
        it.next().unwrap_or("").to_owned(),
    )];
    Server {
        child,
        listening,
        stderr: log,
    }
}

/// The hard RLIMIT_NOFILE of this process (the test's servers may not go above it).
fn hard_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    // rlim_t's width differs between targets.
    #[allow(clippy::unnecessary_cast)]
    let hard = lim.rlim_max as u64;
    hard
}

/// One LIST_AND_GET of 1,500 images from `ferry jtp serve` started with `soft`/`hard`
/// descriptors; then the server must still accept (a LIST and a GET_BY_ID).
fn list_and_get_1500_files(soft: u64, hard: u64) {
    let dir = TempDir::new("sec-fds");
    let images = dir.join("images");
    std::fs::create_dir(&images).unwrap();
    let n = 1500;
    for i in 0..n {
        std::fs::write(images.join(format!("img{i:05}.png")), pseudo_random(i, 200)).unwrap();
    }
    let s = start_limited(
        &[
            "jtp",
            "serve",
            "--images",
            p(&images),
            "--bind",
            "127.0.0.1:0",
            "--no-tls",
        ],
        soft,
        hard,
    );
    let addr = s.addr("jtp");
    let out = dir.join("out");
    let o = ferry(
        &[
            "jtp",
            "get",
            "--list-and-get",
            "--no-tls",
            "--addr",
            &addr,
            "--out",
            p(&out),
            "--json",
        ],
        T,
    );
    assert!(o.status.success(), "jtp get: {}", stderr(&o));
    let got = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .count();
    assert_eq!(got, n as usize, "every file served by one LIST_AND_GET");
    for i in [0, 777, n - 1] {
        let name = format!("img{i:05}.png");
        assert_eq!(
            sha256_file(&out.join(&name)),
            sha(&pseudo_random(i, 200)),
            "{name}"
        );
    }
    // New connections are still accepted, and served.
    for _ in 0..3 {
        let o = ferry(&["jtp", "list", "--no-tls", "--addr", &addr], T);
        assert!(o.status.success(), "jtp list after: {}", stderr(&o));
    }
    let o = ferry(
        &[
            "jtp",
            "get",
            "--list-and-get",
            "--no-tls",
            "--addr",
            &addr,
            "--out",
            p(&dir.join("again")),
        ],
        T,
    );
    assert!(o.status.success(), "second jtp get: {}", stderr(&o));
    assert!(
        !s.stderr_text().contains("Too many open files"),
        "{}",
        s.stderr_text()
    );
}

#[test]
fn a_soft_limit_of_1024_descriptors_serves_1500_files_and_keeps_accepting() {
    let hard = hard_fd_limit();
    assert!(
        hard > 1024,
        "this test needs a hard RLIMIT_NOFILE above 1024 to leave the server room to raise \
         its soft limit (it is {hard})"
    );
    list_and_get_1500_files(1024, hard);
}

#[test]
fn a_hard_limit_of_1024_descriptors_serves_1500_files_and_keeps_accepting() {
    // No room to raise: only descriptors used per transfer, never per file, can do this.
    list_and_get_1500_files(1024, 1024);
}

#[test]
fn certs_out_replaces_planted_links_and_sets_modes() {
    let root = TempDir::new("sec-certs");
    let out = root.join("certs");
    std::fs::create_dir(&out).unwrap();
    let victim = root.join("victim");
    std::fs::write(&victim, b"keep me").unwrap();
    symlink(&victim, out.join("key.pem")).unwrap();
    std::fs::write(out.join("ca.pem"), b"old").unwrap();
    std::fs::set_permissions(out.join("ca.pem"), std::fs::Permissions::from_mode(0o666)).unwrap();
    let o = ferry(&["certs", "--out", p(&out)], T);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
    for (name, mode) in [
        ("key.pem", 0o600),
        ("ca-key.pem", 0o600),
        ("cert.pem", 0o644),
        ("ca.pem", 0o644),
    ] {
        let m = std::fs::symlink_metadata(out.join(name)).unwrap();
        assert!(m.is_file(), "{name} is a regular file now");
        assert_eq!(m.permissions().mode() & 0o777, mode, "{name}");
    }
}

#[test]
fn a_rate_limited_tls_peer_is_counted_before_any_tls_work() {
    let dir = TempDir::new("sec-rate");
    std::fs::write(dir.join("a.png"), pseudo_random(5, 100)).unwrap();
    let s = Server::start(
        &[
            "jtp",
            "serve",
            "--images",
            p(dir.path()),
            "--bind",
            "127.0.0.1:0",
            "--rate-limit",
            "1",
        ],
        1,
    );
    let addr = s.addr("jtp");
    // A peer that connects and sends no TLS at all still uses its one admission: the count
    // comes before any TLS work. (It sends bytes that are no ClientHello, so the server ends
    // the handshake at once and our read sees the close: the admission has happened.)
    let mut raw = std::net::TcpStream::connect(&addr).unwrap();
    raw.set_read_timeout(Some(T)).unwrap();
    raw.write_all(b"not a tls client hello\r\n").unwrap();
    let mut sink = Vec::new();
    let _ = raw.read_to_end(&mut sink);
    drop(raw);
    // So the next peer is refused: JTPE 5 inside TLS, as jtp.md 3.7 asks (the refusal costs
    // the server one handshake; the README says so).
    let cert = dir.join(".ferry/tls/cert.pem");
    let o = ferry(&["jtp", "list", "--addr", &addr, "--cert", p(&cert)], T);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("too many requests"), "{}", stderr(&o));
}

// -------------------------------------------------------------------------------------------
// FastDP, filestorage and sync (issue 15 on the protocols that came after it)
// -------------------------------------------------------------------------------------------

/// `ferry ARGS` with `XDG_CACHE_HOME=cache` (FastDP's push resume records), killed after `T`.
fn ferry_cached(args: &[&str], cache: &Path) -> Output {
    let mut child = Command::new(FERRY)
        .args(args)
        .env("XDG_CACHE_HOME", cache)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferry");
    let deadline = Instant::now() + T;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Every regular file or link under `dir` (folders themselves are not listed).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// Swaps `share/.ferry` for a link to a folder tree of the attacker's (with the subfolders
/// `dirs`, private, so that a path that re-resolves `.ferry` would find them), keeping the real
/// one aside. Returns the attacker's folder.
fn swap_state_folder(root: &Path, share: &Path, dirs: &[&str]) -> PathBuf {
    let evil = root.join("evil");
    for d in dirs {
        std::fs::create_dir_all(evil.join(d)).unwrap();
    }
    for d in std::iter::once(evil.clone()).chain(dirs.iter().map(|d| evil.join(d))) {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    std::fs::rename(share.join(".ferry"), share.join("ferry-state-moved")).unwrap();
    symlink(&evil, share.join(".ferry")).unwrap();
    evil
}

#[test]
fn fastdp_push_state_goes_to_the_opened_state_folder_not_through_a_swapped_in_link() {
    let root = TempDir::new("sec-fdp-swap");
    let share = root.join("share");
    std::fs::create_dir_all(&share).unwrap();
    let s = Server::start(
        &[
            "fastdp",
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--root",
            p(&share),
            "--disk-reserve",
            "0",
        ],
        1,
    );
    let addr = s.addr("fastdp");
    // While it runs, a user who may write into share/ swaps .ferry for a link to a tree of
    // theirs: the server keeps using the folder it opened and checked.
    let evil = swap_state_folder(root.path(), &share, &["ingest/fastdp"]);
    let data = pseudo_random(6, 300_000);
    let file = root.join("up.bin");
    std::fs::write(&file, &data).unwrap();
    let o = ferry_cached(
        &["fastdp", "send", "--addr", &addr, p(&file)],
        &root.join("cache"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    eventually("the upload in the folder", || {
        std::fs::read(share.join("up.bin"))
            .map_err(|e| e.to_string())
            .and_then(|b| {
                if b == data {
                    Ok(())
                } else {
                    Err("differs".into())
                }
            })
    });
    assert_eq!(
        files_under(&evil),
        Vec::<PathBuf>::new(),
        "written through the link"
    );
    let done = files_under(&share.join("ferry-state-moved/ingest/fastdp"));
    assert!(
        done.iter().any(|f| f.to_string_lossy().ends_with(".done")),
        "the completion record is in the opened folder: {done:?}"
    );
}

#[test]
fn fastdp_get_never_writes_through_a_planted_resume_record_link() {
    let root = TempDir::new("sec-fdp-rec");
    let share = root.join("share");
    std::fs::create_dir_all(&share).unwrap();
    let data = pseudo_random(7, 200_000);
    std::fs::write(share.join("d.bin"), &data).unwrap();
    let s = Server::start(
        &[
            "fastdp",
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--root",
            p(&share),
        ],
        1,
    );
    let addr = s.addr("fastdp");
    let out = root.join("out");
    let work = out.join(".ferry/fastdp");
    std::fs::create_dir_all(&work).unwrap();
    for d in [out.join(".ferry"), work.clone()] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    // The record's name is predictable (addr and target): its temporary is planted as a link.
    let mut key = Sha256::new();
    key.update(addr.as_bytes());
    key.update([0]);
    key.update(b"d.bin");
    let name = format!("pull-{}.json.new", hex(&key.finalize()[..16]));
    let victim = root.join("victim");
    std::fs::write(&victim, b"keep me").unwrap();
    symlink(&victim, work.join(&name)).unwrap();
    let o = ferry_cached(
        &["fastdp", "get", "--addr", &addr, "--out", p(&out), "d.bin"],
        &root.join("cache"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
    assert_eq!(sha256_file(&out.join("d.bin")), sha(&data));
}

/// A hostile FastDP server: upgrades every connection, reads the pull request and answers it
/// with a header offering `name` (the real sizes of `data`), then closes.
fn hostile_fastdp(name: &'static str, data: &'static [u8]) -> (String, Arc<AtomicBool>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    std::thread::spawn(move || {
        while !stop2.load(Ordering::SeqCst) {
            let Ok((s, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            let _ = answer_pull(s, name, data);
        }
    });
    (addr, stop)
}

fn answer_pull(mut s: std::net::TcpStream, name: &str, data: &[u8]) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(T))?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut key = String::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line)?;
        if let Some(k) = line.strip_prefix("Sec-FastDP-Key: ") {
            key = k.trim().to_owned();
        }
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    s.write_all(format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: fastdp\r\nConnection: Upgrade\r\nSec-FastDP-Key: {key}\r\nSec-FastDP-Version: 1.2.0\r\n\r\n").as_bytes())?;
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let mut req = vec![0u8; u32::from_be_bytes(len) as usize];
    r.read_exact(&mut req)?;
    let req: Value = serde_json::from_slice(&req)?;
    let reply = serde_json::json!({
        "Type": "Header",
        "Mode": "Pull",
        "OneChunk": 262_144,
        "FullChunk": (data.len() as u64).div_ceil(262_144),
        "FullSize": data.len(),
        "DPVersion": "1.2.0",
        "CompressType": "None",
        "FileName": name,
        "TransferId": req["TransferId"],
        "Checksum": format!("sha256:{}", hex(&sha(data))),
        "MaxConnections": 1,
    });
    let body = reply.to_string().into_bytes();
    s.write_all(&(body.len() as u32).to_be_bytes())?;
    s.write_all(&body)?;
    Ok(())
}

#[test]
fn fastdp_get_refuses_a_name_it_did_not_ask_for_and_any_dotfile() {
    static DATA: &[u8] = b"#!/bin/sh\necho owned\n";
    let root = TempDir::new("sec-fdp-name");
    for (asked, offered) in [("photo.png", ".bashrc"), ("photo.png", "other.png")] {
        let (addr, stop) = hostile_fastdp(offered, DATA);
        let out = root.path().join(format!("out-{offered}"));
        let o = ferry_cached(
            &[
                "fastdp",
                "get",
                "--addr",
                &addr,
                "--out",
                p(&out),
                "--retries",
                "1",
                asked,
            ],
            &root.join("cache"),
        );
        stop.store(true, Ordering::SeqCst);
        assert!(!o.status.success(), "{offered}: accepted");
        assert!(
            stderr(&o).contains("not the name asked for"),
            "{}",
            stderr(&o)
        );
        assert!(!out.join(offered).exists());
    }
    // By SHA-256 the server's name is taken, but never a dotfile.
    let (addr, stop) = hostile_fastdp(".profile", DATA);
    let out = root.join("out-sha");
    let o = ferry_cached(
        &[
            "fastdp",
            "get",
            "--addr",
            &addr,
            "--out",
            p(&out),
            "--retries",
            "1",
            &hex(&sha(DATA)),
        ],
        &root.join("cache"),
    );
    stop.store(true, Ordering::SeqCst);
    assert!(!o.status.success(), "dotfile accepted");
    assert!(stderr(&o).contains("dotfile"), "{}", stderr(&o));
    assert!(!out.join(".profile").exists());
}

/// `addr`'s listener lets two connections from 127.0.0.1 in (with `--max-connections 8`) and
/// refuses a third at once, while 127.0.0.2 is still let in; `refused` says how a refusal
/// looks.
fn caps_per_address(addr: &str, refused: impl Fn(&[u8]) -> bool, greeting: &[u8]) {
    let held: Vec<_> = (0..2)
        .map(|_| {
            let mut c = connect_from([127, 0, 0, 1], addr);
            c.write_all(greeting).unwrap();
            c
        })
        .collect();
    // The listener counts connections at accept, in order: give it the two first.
    std::thread::sleep(Duration::from_millis(200));
    let mut third = connect_from([127, 0, 0, 1], addr);
    let mut got = Vec::new();
    let _ = third.read_to_end(&mut got);
    assert!(refused(&got), "third from one address: {got:02x?}");
    let mut other = connect_from([127, 0, 0, 2], addr);
    other
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    other.write_all(greeting).unwrap();
    // Let in: the service waits for more (a read times out) or greets; never a refusal.
    let mut b = [0u8; 64];
    match other.read(&mut b) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        Ok(n) if n > 0 && !refused(&b[..n]) => {}
        r => panic!("another address was not let in: {r:?} {:02x?}", &b[..]),
    }
    drop(held);
}

/// A TCP connection to `addr` from the loopback address `src`.
fn connect_from(src: [u8; 4], addr: &str) -> std::net::TcpStream {
    use std::os::fd::FromRawFd;
    let dst: std::net::SocketAddrV4 = addr.parse().expect("an IPv4 address");
    let sin = |ip: [u8; 4], port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor we own; the sockaddr_in values live across
    // each call; the descriptor is handed to TcpStream, which closes it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = std::net::TcpStream::from_raw_fd(fd);
        let local = sin(src, 0);
        let r = libc::bind(fd, &local as *const _ as *const libc::sockaddr, len);
        assert_eq!(r, 0, "bind {src:?}: {}", std::io::Error::last_os_error());
        let remote = sin(dst.ip().octets(), dst.port());
        let r = libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len);
        assert_eq!(r, 0, "connect {addr}: {}", std::io::Error::last_os_error());
        stream.set_read_timeout(Some(T)).unwrap();
        stream
    }
}

#[test]
fn fastdp_listeners_cap_connections_per_address() {
    let share = TempDir::new("sec-fdp-perip");
    let s = Server::start(
        &[
            "fastdp",
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--root",
            p(share.path()),
            "--max-connections",
            "8",
        ],
        1,
    );
    caps_per_address(&s.addr("fastdp"), |b| b.starts_with(b"HTTP/1.1 503"), b"");
    let all = Server::start(
        &[
            "serve",
            p(share.path()),
            "--jtp-bind",
            "127.0.0.1:0",
            "--tej-bind",
            "127.0.0.1:0",
            "--cjp2p-bind",
            "127.0.0.1:0",
            "--fastdp-bind",
            "127.0.0.1:0",
            "--filestorage-bind",
            "127.0.0.1:0",
            "--filestorage-unix",
            "off",
            "--max-connections",
            "8",
        ],
        5,
    );
    caps_per_address(&all.addr("fastdp"), |b| b.starts_with(b"HTTP/1.1 503"), b"");
    // filestorage: the tcpd preamble, then nothing; a refused peer is closed without a byte.
    caps_per_address(&all.addr("filestorage"), <[u8]>::is_empty, b"filestorage");
}

#[test]
fn filestorage_store_goes_to_the_opened_state_folder_not_through_a_swapped_in_link() {
    let root = TempDir::new("sec-fs-swap");
    let share = root.join("share");
    std::fs::create_dir_all(&share).unwrap();
    let s = Server::start(
        &[
            "filestorage",
            "serve",
            "--root",
            p(&share),
            "--no-unix",
            "--bind",
            "127.0.0.1:0",
        ],
        1,
    );
    let addr = s.addr("filestorage");
    let o = ferry(
        &[
            "filestorage",
            "token",
            "--uid",
            "1000",
            "--login",
            "u",
            "--root",
            p(&share),
        ],
        T,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let token = String::from_utf8(o.stdout).unwrap().trim().to_owned();
    // The attacker's tree has every folder of the store, so a path that re-resolves .ferry
    // would write there.
    let evil = swap_state_folder(
        root.path(),
        &share,
        &[
            "filestorage/objects",
            "filestorage/records",
            "filestorage/partial",
            "filestorage/by-owner",
            "filestorage/by-tag",
        ],
    );
    let data = pseudo_random(8, 150_000);
    let file = root.join("up.bin");
    std::fs::write(&file, &data).unwrap();
    let o = ferry(
        &[
            "filestorage",
            "put",
            "--addr",
            &addr,
            "--token",
            &token,
            "--tag",
            "public",
            p(&file),
        ],
        T,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        files_under(&evil),
        Vec::<PathBuf>::new(),
        "written through the link"
    );
    let store = share.join("ferry-state-moved/filestorage");
    assert!(store
        .join(format!("objects/{}", hex(&sha(&data))))
        .is_file());
    assert_eq!(sha256_file(&share.join("up.bin")), sha(&data), "published");
}

#[test]
fn sync_never_writes_through_planted_state_links_and_refuses_a_shared_state_folder() {
    let root = TempDir::new("sec-sync");
    let src = root.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.bin"), pseudo_random(9, 10_000)).unwrap();
    let srv = Server::start(
        &["tej", "serve", "--bind", "127.0.0.1:0", "--root", p(&src)],
        1,
    );
    let url = format!("tej://{}", srv.addr("tej"));
    let dst = root.join("dst");
    let attic = dst.join(".ferry/attic");
    std::fs::create_dir_all(&attic).unwrap();
    for d in [dst.join(".ferry"), attic.clone()] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    // A file only here, so --delete keeps it in the attic and the manifest is written.
    std::fs::write(dst.join("gone.bin"), b"delete me").unwrap();
    let victim = root.join("victim");
    std::fs::write(&victim, b"keep me").unwrap();
    symlink(&victim, attic.join(".manifest.json.tmp")).unwrap();
    let o = ferry(&["sync", &url, p(&dst), "--delete"], T);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
    assert!(dst.join("a.bin").is_file() && !dst.join("gone.bin").exists());
    assert!(std::fs::symlink_metadata(attic.join("manifest.json"))
        .unwrap()
        .is_file());

    // A DIR/.ferry others may write into is refused before anything is written there.
    let dst2 = root.join("dst2");
    std::fs::create_dir_all(dst2.join(".ferry")).unwrap();
    std::fs::set_permissions(dst2.join(".ferry"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let o = ferry(&["sync", &url, p(&dst2)], T);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("chmod go-w"), "{}", stderr(&o));
    assert_eq!(std::fs::read_dir(dst2.join(".ferry")).unwrap().count(), 0);
}

// -------------------------------------------------------------------------------------------
// Disk space promised across protocols (issue 15 item 5)
// -------------------------------------------------------------------------------------------

/// Bytes an unprivileged process may still write on the file system of `dir` (`df`'s avail).
fn free_bytes(dir: &Path) -> u64 {
    let o = Command::new("df")
        .args(["-B1", "--output=avail", p(dir)])
        .output()
        .expect("df");
    let text = String::from_utf8_lossy(&o.stdout);
    text.lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("df said {text:?}"))
}

/// A filestorage AUTHENTICATION over TCP (preamble first) for one file of `size` bytes;
/// returns the reply's JSON.
fn filestorage_auth(addr: &str, token: &str, fid: &str, size: u64) -> Value {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(b"filestorage").unwrap();
    let mut ok = [0u8; 2];
    s.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"ok");
    let json = format!(
        r#"{{"message-id":"1a2b3c4d-0000-4000-8000-000000000001","token":"{token}","files":[{{"name":"big.bin","size":{size}}}],"fid":"{fid}","tags":[]}}"#
    );
    let mut frame = ((json.len() + 1) as u32).to_be_bytes().to_vec();
    frame.push(1);
    frame.extend_from_slice(json.as_bytes());
    s.write_all(&frame).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    assert_eq!(body[0], 2, "a RESPONSE");
    serde_json::from_slice(&body[1..]).unwrap()
}

/// A FastDP push header declaring `size` bytes on a fresh connection; returns its reply.
fn fastdp_declare(addr: &str, size: u64) -> Value {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(
        format!(
            "GET /fastdp-endpoint HTTP/1.1\r\nHost: {addr}\r\nUpgrade: fastdp\r\nConnection: Upgrade\r\nSec-FastDP-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-FastDP-Version: 1.2.0\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        assert!(!line.is_empty(), "no upgrade");
    }
    let one_chunk = 4u64 << 20;
    let h = serde_json::json!({
        "OneChunk": one_chunk,
        "FullChunk": size.div_ceil(one_chunk),
        "FullSize": size,
        "DPVersion": "1.2.0",
        "CompressType": "None",
        "FileName": "declared.bin",
        "TransferId": "3d0f6c1a-5b7e-4e21-9a51-00000000f5f5",
        "Checksum": format!("sha256:{}", hex(&sha(b"never sent"))),
    })
    .to_string();
    s.write_all(&(h.len() as u32).to_be_bytes()).unwrap();
    s.write_all(h.as_bytes()).unwrap();
    let mut len = [0u8; 4];
    r.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    r.read_exact(&mut body).unwrap();
    serde_json::from_slice(&body).unwrap()
}

/// filestorage's partial transfers are promised in the process-wide ledger: a FastDP push in
/// the same `ferry serve` that would fit the free space, but not the free space less what
/// filestorage's unfinished (sparse) uploads were promised, is refused with `no-space`.
#[test]
fn filestorage_partial_transfers_are_promised_to_fastdp_in_the_same_server() {
    const GIB: u64 = 1 << 30;
    let root = TempDir::new("sec-fs-ledger");
    let share = root.join("share");
    std::fs::create_dir_all(&share).unwrap();
    let free = free_bytes(&share);
    // Half the free space in uids of 1 GiB each (the default quota), at least 3 GiB.
    let k = (free / 2 / GIB).min(64);
    assert!(
        k >= 3,
        "this test needs at least 6 GiB free on {}, found {free}",
        share.display()
    );
    let s = Server::start(
        &[
            "serve",
            p(&share),
            "--jtp-bind",
            "127.0.0.1:0",
            "--tej-bind",
            "127.0.0.1:0",
            "--cjp2p-bind",
            "127.0.0.1:0",
            "--fastdp-bind",
            "127.0.0.1:0",
            "--filestorage-bind",
            "127.0.0.1:0",
            "--filestorage-unix",
            "off",
        ],
        5,
    );
    let fs_addr = s.addr("filestorage");
    for uid in 0..k {
        let o = ferry(
            &[
                "filestorage",
                "token",
                "--uid",
                &(1000 + uid).to_string(),
                "--login",
                "u",
                "--root",
                p(&share),
            ],
            T,
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let token = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let fid = format!("00000000-0000-4000-8000-{uid:012}");
        let r = filestorage_auth(&fs_addr, &token, &fid, GIB);
        assert_eq!(r["response"], "Ok", "uid {uid}: {r}");
    }
    // Fits the free space with k - 2 GiB to spare; not once k GiB are promised.
    let declared = free - (k - 2) * GIB;
    let r = fastdp_declare(&s.addr("fastdp"), declared);
    assert_eq!(r["Code"], "no-space", "{r}");
}

/// `filestorage serve --disk-reserve` keeps that much free: a file that fits the disk but not
/// the disk less the reserve is refused (`quota-exceeded: disk`).
#[test]
fn filestorage_serve_keeps_its_disk_reserve_free() {
    let root = TempDir::new("sec-fs-reserve");
    let share = root.join("share");
    let run = root.join("run");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::create_dir_all(&run).unwrap();
    let key = root.join("key");
    std::fs::write(&key, b"k3y\n").unwrap();
    let reserve = (1u64 << 60).to_string();
    let s = Server::start(
        &[
            "filestorage",
            "serve",
            "--root",
            p(&share),
            "--rundir",
            p(&run),
            "--no-unix",
            "--bind",
            "127.0.0.1:0",
            "--jwt-key-file",
            p(&key),
            "--disk-reserve",
            &reserve,
        ],
        1,
    );
    let o = ferry(
        &[
            "filestorage",
            "token",
            "--uid",
            "7",
            "--login",
            "u",
            "--jwt-key-file",
            p(&key),
        ],
        T,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let token = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let r = filestorage_auth(
        &s.addr("filestorage"),
        &token,
        "00000000-0000-4000-8000-000000000007",
        1000,
    );
    assert_eq!(r["reason"], "quota-exceeded: disk", "{r}");
}
