//! `ferry jtp get` end to end: real binary against real binary (plain, TLS with the generated
//! certificate pinned, TLS with `ferry certs` certificates), and against hostile or broken
//! servers emulated in-process with canned bytes. Tests are named after the checklist items of
//! `shared/specs/jtp.md` section 8.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{self, ferry, Server, TempDir, FERRY};
use crate::jtp_peers::{
    bmp, entry, hex, jtpe, mixed_images, packet, ref_server, rnd, varint, write_images, xxh,
    zstd_no_size, zstd_zero_bomb, Flow, Image, Peer, Req,
};

const T: Duration = Duration::from_secs(60);

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `ferry jtp serve --images DIR --bind 127.0.0.1:0 EXTRA...`
fn serve(dir: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["jtp", "serve", "--images", s(dir), "--bind", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Server::start(&args, 1)
}

/// `ferry jtp get --addr ADDR --out OUT --json EXTRA...`
fn get(addr: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["jtp", "get", "--addr", addr, "--out", s(out), "--json"];
    args.extend_from_slice(extra);
    ferry(&args, T)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Parses `--json` output and checks it has every documented field.
fn json(o: &Output) -> serde_json::Value {
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "--json output does not parse ({e}): {:?}; stderr {}",
            String::from_utf8_lossy(&o.stdout),
            stderr(o)
        )
    });
    for k in [
        "saved",
        "corrupt",
        "missing",
        "failed",
        "wire_bytes",
        "bytes",
        "images",
        "seconds",
        "cancelled",
    ] {
        assert!(j.get(k).is_some(), "--json lacks {k:?}: {j}");
    }
    for saved in j["saved"].as_array().unwrap() {
        for k in ["id", "name", "size", "outcome"] {
            assert!(saved.get(k).is_some(), "saved entry lacks {k:?}: {saved}");
        }
    }
    j
}

/// `--json` output of a run that may have failed (then stdout is empty).
fn json_of(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
}

fn ids_of(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

/// Every entry of `dir` (dot-names included), sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// No regular dot-file (temporary) is left in `dir`.
fn assert_no_temporaries(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with('.') && e.file_type().unwrap().is_file() {
            panic!("temporary {n:?} left in {}", dir.display());
        }
    }
}

/// Runs `ferry ARGS...` under a 1 GiB address-space limit, so an allocation sized from the
/// wire aborts instead of passing unnoticed; panics past `timeout`.
fn ferry_bounded(args: &[&str], timeout: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 1048576 && exec \"$@\"")
        .arg("sh")
        .arg(FERRY)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let to = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let te = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "ferry {args:?} did not finish within {timeout:?}: {}",
                String::from_utf8_lossy(&te.join().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = started.elapsed();
    (
        Output {
            status,
            stdout: to.join().unwrap(),
            stderr: te.join().unwrap(),
        },
        elapsed,
    )
}

fn get_bounded(addr: &str, out: &Path) -> (Output, Duration) {
    ferry_bounded(
        &[
            "jtp",
            "get",
            "--no-tls",
            "--io-timeout",
            "5",
            "--json",
            "--addr",
            addr,
            "--out",
            s(out),
        ],
        Duration::from_secs(20),
    )
}

/// A canned server: `list` answers LIST, `reply` answers any GET/BATCH/LIST_AND_GET.
fn canned(list: Vec<u8>, reply: Vec<u8>) -> Peer {
    Peer::plain(Arc::new(move |_, req, w| {
        match req {
            Req::Connect => {}
            Req::List { .. } => w.write_all(&list)?,
            Req::Get { .. } | Req::Batch { .. } | Req::ListAndGet { .. } => {
                w.write_all(&reply)?;
                return Ok(Flow::Close);
            }
            _ => return Ok(Flow::Close),
        }
        Ok(Flow::Next)
    }))
}

fn listing(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut v = b"JTPL".to_vec();
    v.extend(varint(entries.len() as u32));
    for e in entries {
        v.extend_from_slice(e);
    }
    v
}

fn jtpd(packets: &[Vec<u8>]) -> Vec<u8> {
    let mut v = b"JTPD".to_vec();
    v.push(packets.len() as u8);
    for p in packets {
        v.extend_from_slice(p);
    }
    v
}

fn listed(i: &Image) -> Vec<u8> {
    entry(i.id(), 0, i.name.as_bytes(), i.data.len() as u32)
}

// ---------------------------------------------------------------------------------------------
// 1. Real binary to real binary.

#[test]
fn j37_j45_plain_whole_catalog_byte_identical_in_every_mode() {
    let src = TempDir::new("j37src");
    write_images(src.path(), &mixed_images());
    let server = serve(src.path(), &["--no-tls"]);
    let addr = server.addr("jtp");
    let modes: [&[&str]; 7] = [
        &[],
        &["--fsync"],
        &["-k"],
        &["-p", "4"],
        &["--list-and-get"],
        &["--repeat", "2", "-k"],
        &["-k", "-p", "4", "--repeat", "2"],
    ];
    for mode in modes {
        let out = TempDir::new("j37out");
        let mut extra = vec!["--no-tls"];
        extra.extend_from_slice(mode);
        let o = get(&addr, out.path(), &extra);
        assert_eq!(o.status.code(), Some(0), "{mode:?}: {}", stderr(&o));
        assert_eq!(
            harness::tree(out.path()),
            harness::tree(src.path()),
            "{mode:?}"
        );
        assert_no_temporaries(out.path());
        let j = json(&o);
        assert!(ids_of(&j["corrupt"]).is_empty() && ids_of(&j["missing"]).is_empty());
        let total: u64 = mixed_images().iter().map(|i| i.data.len() as u64).sum();
        assert!(j["bytes"].as_u64().unwrap() >= total, "{j}");
        // The BMPs travel compressed: fewer bytes on the wire than on disk.
        assert!(
            j["wire_bytes"].as_u64().unwrap() < j["bytes"].as_u64().unwrap(),
            "{j}"
        );
    }
}

#[test]
fn j37_tls_generated_certificate_pinned() {
    let src = TempDir::new("j37tls");
    // Over TLS a file goes out through pread: several whole 256 KiB chunks, then the checked tail.
    let mut images = mixed_images();
    images.push(Image::new("huge.png", rnd(8, 1_500_001)));
    write_images(src.path(), &images);
    let server = serve(src.path(), &[]);
    let addr = server.addr("jtp");
    let cert = src.join(".ferry/tls/cert.pem");
    assert!(cert.is_file(), "generated certificate missing");
    let modes: [&[&str]; 4] = [
        &[],
        &["-k", "-p", "4"],
        &["--list-and-get"],
        &["--server-name", "localhost"],
    ];
    for mode in modes {
        let out = TempDir::new("j37tlsout");
        let mut extra = vec!["--cert", s(&cert)];
        extra.extend_from_slice(mode);
        let o = get(&addr, out.path(), &extra);
        assert_eq!(o.status.code(), Some(0), "{mode:?}: {}", stderr(&o));
        assert_eq!(
            harness::tree(out.path()),
            harness::tree(src.path()),
            "{mode:?}"
        );
        json(&o);
    }
}

#[test]
fn j37_j45_tls_test_ca_with_server_name_and_wrong_trust_fails() {
    let src = TempDir::new("j37ca");
    write_images(src.path(), &mixed_images());
    let certs = TempDir::new("j37certs");
    let o = ferry(&["certs", "--out", s(certs.path())], T);
    assert!(o.status.success(), "{}", stderr(&o));
    let server = serve(
        src.path(),
        &[
            "--cert",
            s(&certs.join("cert.pem")),
            "--key",
            s(&certs.join("key.pem")),
        ],
    );
    let addr = server.addr("jtp");
    let ca = certs.join("ca.pem");
    let out = TempDir::new("j37caout");
    let o = get(
        &addr,
        out.path(),
        &["--cert", s(&ca), "--server-name", "localhost", "-k"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(harness::tree(out.path()), harness::tree(src.path()));

    // Wrong name, Mozilla roots instead of the test CA, plain TCP against TLS: all refused.
    let bad: [&[&str]; 3] = [
        &["--cert", s(&ca), "--server-name", "wrong.example"],
        &["--server-name", "localhost"],
        &["--no-tls"],
    ];
    for extra in bad {
        let out = TempDir::new("j37bad");
        let started = Instant::now();
        let o = get(&addr, out.path(), extra);
        let code = o.status.code();
        assert!(
            matches!(code, Some(3) | Some(4)),
            "{extra:?}: {code:?} {}",
            stderr(&o)
        );
        assert!(started.elapsed() < Duration::from_secs(20));
        assert!(harness::tree(out.path()).is_empty());
    }
}

#[test]
fn j37_catalog_of_300_images() {
    let src = TempDir::new("j37big");
    let imgs: Vec<Image> = (0..300u64)
        .map(|i| {
            Image::new(
                &format!(
                    "img{i:03}.{}",
                    ["png", "jpg", "gif", "bmp", "webp"][i as usize % 5]
                ),
                rnd(i + 1000, 100 + i as usize * 7),
            )
        })
        .collect();
    write_images(src.path(), &imgs);
    let server = serve(src.path(), &["--no-tls"]);
    let addr = server.addr("jtp");
    let modes: [&[&str]; 4] = [&[], &["-k", "-p", "4"], &["--list-and-get"], &["--batch"]];
    for mode in modes {
        let out = TempDir::new("j37bigout");
        let mut extra = vec!["--no-tls"];
        extra.extend_from_slice(mode);
        let o = get(&addr, out.path(), &extra);
        assert_eq!(o.status.code(), Some(0), "{mode:?}: {}", stderr(&o));
        assert_eq!(harness::tree(out.path()).len(), 300);
        assert_eq!(
            harness::tree(out.path()),
            harness::tree(src.path()),
            "{mode:?}"
        );
        assert_eq!(json(&o)["images"].as_u64(), Some(300));
    }
}

#[test]
fn j38_batch_transfers_only_missing_and_touches_nothing_else() {
    let imgs = mixed_images();
    let src = TempDir::new("j38src");
    write_images(src.path(), &imgs);
    let server = serve(src.path(), &["--no-tls"]);
    let addr = server.addr("jtp");
    let out = TempDir::new("j38out");
    // The output holds half of the catalog under other names, and a local file of its own.
    let held: Vec<&Image> = imgs.iter().step_by(2).collect();
    for i in &held {
        std::fs::write(out.join(&format!("local-{}", i.name)), &i.data).unwrap();
    }
    std::fs::write(out.join("notes.txt"), b"keep me").unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let before: Vec<(String, u64, i64, i64)> = names(out.path())
        .into_iter()
        .map(|n| {
            let m = std::fs::metadata(out.join(&n)).unwrap();
            (n, m.ino(), m.mtime(), m.mtime_nsec())
        })
        .collect();
    let o = get(&addr, out.path(), &["--no-tls", "--batch"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let j = json(&o);
    let mut got: Vec<String> = j["saved"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap().to_string())
        .collect();
    got.sort();
    let mut want: Vec<String> = imgs
        .iter()
        .skip(1)
        .step_by(2)
        .map(|i| hex(i.id()))
        .collect();
    want.sort();
    assert_eq!(got, want, "only the missing images travel");
    for (n, ino, mt, mtn) in before {
        let m = std::fs::metadata(out.join(&n)).unwrap();
        assert_eq!(
            (m.ino(), m.mtime(), m.mtime_nsec()),
            (ino, mt, mtn),
            "{n} was touched"
        );
    }
    for i in imgs.iter().skip(1).step_by(2) {
        assert_eq!(std::fs::read(out.join(&i.name)).unwrap(), i.data);
    }
    assert_eq!(std::fs::read(out.join("notes.txt")).unwrap(), b"keep me");
    assert_no_temporaries(out.path());
    // Everything held now: nothing to do, exit 1, nothing written.
    let o = get(&addr, out.path(), &["--no-tls", "--batch"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(json(&o)["saved"].as_array().unwrap().is_empty());
}

#[test]
fn j41_existing_different_file_is_kept_and_image_saved_tagged() {
    let src = TempDir::new("j41src");
    let img = Image::new("photo.png", rnd(41, 50_000));
    let same = Image::new("same.png", rnd(42, 1000));
    write_images(src.path(), &[img.clone(), same.clone()]);
    let server = serve(src.path(), &["--no-tls"]);
    let out = TempDir::new("j41out");
    std::fs::write(out.join("photo.png"), b"a different photo").unwrap();
    std::fs::write(out.join("same.png"), &same.data).unwrap();
    let ino = std::fs::metadata(out.join("same.png")).unwrap().ino();
    let o = get(&server.addr("jtp"), out.path(), &["--no-tls"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(out.join("photo.png")).unwrap(),
        b"a different photo"
    );
    let tagged = format!("photo.{}.png", &hex(img.id())[..8]);
    assert_eq!(std::fs::read(out.join(&tagged)).unwrap(), img.data);
    assert_eq!(std::fs::metadata(out.join("same.png")).unwrap().ino(), ino);
    let j = json(&o);
    let outcome = |id: u64| {
        j["saved"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == hex(id).as_str())
            .map(|x| x["outcome"].as_str().unwrap().to_string())
    };
    assert_eq!(outcome(img.id()).as_deref(), Some("renamed"));
    assert_eq!(outcome(same.id()).as_deref(), Some("already-present"));
    let mut want = vec!["photo.png".to_string(), tagged, "same.png".into()];
    want.sort();
    assert_eq!(names(out.path()), want);
}

#[test]
fn j41_client_killed_mid_transfer_leaves_no_partial_final_file() {
    // A server that announces an 8 MiB packet, sends 1 MiB and stalls: the client is surely
    // mid-transfer when it is killed.
    let data = rnd(4141, 8 << 20);
    let id = xxh(&data);
    let list = listing(&[entry(id, 0, b"big.png", data.len() as u32)]);
    let mut head = b"JTPD\x01".to_vec();
    head.extend(packet(0, id, &data)[..(1 << 20) + 20].to_vec());
    let peer = Peer::plain(Arc::new(move |_, req, w| match req {
        Req::Connect => Ok(Flow::Next),
        Req::List { .. } => {
            w.write_all(&list)?;
            Ok(Flow::Next)
        }
        _ => {
            w.write_all(&head)?;
            Ok(Flow::Stall(Duration::from_secs(15)))
        }
    }));
    let out = TempDir::new("j41kill");
    std::fs::create_dir_all(out.path()).unwrap();
    let mut child = Command::new(FERRY)
        .args([
            "jtp",
            "get",
            "--no-tls",
            "--addr",
            &peer.addr,
            "--out",
            s(out.path()),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the temporary to hold some of the data.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let partial = std::fs::read_dir(out.path()).unwrap().any(|e| {
            let e = e.unwrap();
            e.file_type().unwrap().is_file() && e.metadata().unwrap().len() > 0
        });
        if partial || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !out.join("big.png").exists(),
        "partial file under its final name"
    );
    for n in names(out.path()) {
        assert!(n.starts_with('.'), "{n:?} is not a dot-temporary");
    }
}

#[test]
fn j45_exit_codes_and_json() {
    let src = TempDir::new("exitsrc");
    write_images(src.path(), &mixed_images()[..2]);
    let server = serve(src.path(), &["--no-tls"]);
    let addr = server.addr("jtp");
    // 0: everything asked for arrived; the named id only.
    let want = mixed_images()[1].id();
    let out = TempDir::new("exit0");
    let o = get(&addr, out.path(), &["--no-tls", &hex(want)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(harness::tree(out.path()).len(), 1);
    // 1: an unknown id is missing.
    let out = TempDir::new("exit1");
    let o = get(&addr, out.path(), &["--no-tls", "0123456789abcdef"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(
        ids_of(&json(&o)["missing"]),
        vec!["0123456789abcdef".to_string()]
    );
    // 3: connection refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    let out = TempDir::new("exit3");
    let o = get(&dead_addr, out.path(), &["--no-tls"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    // 2: bad flags and values.
    let bad: [&[&str]; 4] = [
        &["--bogus"],
        &["-p", "x"],
        &["not-an-id"],
        &["--repeat", "-1"],
    ];
    for extra in bad {
        let out = TempDir::new("exit2");
        let mut extra2 = vec!["--no-tls"];
        extra2.extend_from_slice(extra);
        let o = get(&addr, out.path(), &extra2);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", stderr(&o));
    }
    // `jtp list --json` parses too.
    let o = ferry(&["jtp", "list", "--no-tls", "--addr", &addr, "--json"], T);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let l: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(l.as_array().unwrap().len(), 2);
}

/// Connections and requests, observed by the emulated reference server.
#[test]
fn j45_keep_alive_one_connection_parallel_contiguous_ranges() {
    let imgs: Vec<Image> = (0..300u64)
        .map(|i| Image::new(&format!("k{i:03}.png"), rnd(2 * i + 1001, 64)))
        .collect();
    let order: Vec<u64> = imgs.iter().map(|i| i.id()).collect();

    // -k --repeat 2: one connection for LIST, both GET chunks and the repeat.
    let peer = Peer::plain(ref_server(imgs.clone(), None));
    let out = TempDir::new("j45k");
    let o = get(&peer.addr, out.path(), &["--no-tls", "-k", "--repeat", "2"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(peer.conns.load(std::sync::atomic::Ordering::SeqCst), 1);
    let reqs = peer.requests();
    assert!(reqs.iter().all(|(_, r)| r.keep_alive()), "{reqs:?}");
    let gets: Vec<usize> = reqs
        .iter()
        .filter_map(|(_, r)| match r {
            Req::Get { ids, .. } => Some(ids.len()),
            _ => None,
        })
        .collect();
    assert_eq!(gets, vec![255, 45, 255, 45]);

    // Without -k: one request per connection, bit 0 clear.
    let peer = Peer::plain(ref_server(imgs.clone(), None));
    let out = TempDir::new("j45nok");
    let o = get(&peer.addr, out.path(), &["--no-tls"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let reqs = peer.requests();
    assert!(reqs.iter().all(|(_, r)| !r.keep_alive()), "{reqs:?}");
    let mut conns: Vec<usize> = reqs.iter().map(|(c, _)| *c).collect();
    conns.dedup();
    assert_eq!(conns.len(), reqs.len(), "one request per connection");

    // -p 4: four GET connections with contiguous ranges covering the listing in order.
    let peer = Peer::plain(ref_server(imgs.clone(), None));
    let out = TempDir::new("j45p4");
    let o = get(&peer.addr, out.path(), &["--no-tls", "-p", "4", "-k"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mut per_conn: std::collections::BTreeMap<usize, Vec<u64>> = Default::default();
    for (c, r) in peer.requests() {
        if let Req::Get { ids, .. } = r {
            per_conn.entry(c).or_default().extend(ids);
        }
    }
    assert_eq!(per_conn.len(), 4, "{:?}", per_conn.keys());
    let mut ranges: Vec<Vec<u64>> = per_conn.into_values().collect();
    ranges.sort_by_key(|r| order.iter().position(|id| *id == r[0]).unwrap());
    assert_eq!(ranges.concat(), order);
    assert_eq!(harness::tree(out.path()).len(), 300);

    // -p 4 without -k: LIST on its own connection, then one connection per GET.
    let peer = Peer::plain(ref_server(imgs.clone(), None));
    let out = TempDir::new("j45p4nok");
    let o = get(&peer.addr, out.path(), &["--no-tls", "-p", "4"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let reqs = peer.requests();
    let gets: Vec<&(usize, Req)> = reqs
        .iter()
        .filter(|(_, r)| matches!(r, Req::Get { .. }))
        .collect();
    assert_eq!(
        gets.len(),
        4,
        "75 ids per worker fit one GET each: {reqs:?}"
    );
    assert_eq!(peer.conns.load(std::sync::atomic::Ordering::SeqCst), 5);
    assert_eq!(harness::tree(out.path()).len(), 300);

    // --list-and-get: LIST then LIST_AND_GET on one connection.
    let peer = Peer::plain(ref_server(imgs.clone(), None));
    let out = TempDir::new("j45lag");
    let o = get(&peer.addr, out.path(), &["--no-tls", "--list-and-get"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let reqs = peer.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0].0, reqs[1].0);
    assert_eq!(reqs[0].1, Req::List { ka: true });
    assert!(matches!(reqs[1].1, Req::ListAndGet { .. }));
    assert_eq!(harness::tree(out.path()).len(), 300);
}

#[test]
fn j45_client_offers_alpn_jtp1_and_accepts_none() {
    let certs = TempDir::new("j45certs");
    assert!(ferry(&["certs", "--out", s(certs.path())], T)
        .status
        .success());
    let imgs = mixed_images()[..2].to_vec();
    for alpn in [&[b"jtp/1".as_slice()][..], &[]] {
        let peer = Peer::tls(
            &certs.join("cert.pem"),
            &certs.join("key.pem"),
            alpn,
            ref_server(imgs.clone(), None),
        );
        let out = TempDir::new("j45alpn");
        let o = get(
            &peer.addr,
            out.path(),
            &[
                "--cert",
                s(&certs.join("ca.pem")),
                "--server-name",
                "localhost",
            ],
        );
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let seen = peer.alpn.lock().unwrap().clone();
        let want = alpn.first().map(|a| a.to_vec());
        assert!(
            !seen.is_empty() && seen.iter().all(|a| *a == want),
            "{seen:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Hostile and broken servers.

#[test]
fn j39_wrong_xxhash_not_written_run_continues_partial() {
    let a = Image::new("a.png", rnd(391, 1000));
    let b = Image::new("b.png", rnd(392, 2000));
    let c = Image::new("c.png", rnd(393, 3000));
    let mut bad = b.data.clone();
    bad[1000] ^= 1;
    let peer = canned(
        listing(&[listed(&a), listed(&b), listed(&c)]),
        jtpd(&[
            packet(0, a.id(), &a.data),
            packet(0, b.id(), &bad),
            packet(0, c.id(), &c.data),
        ]),
    );
    let out = TempDir::new("j39");
    let o = get(&peer.addr, out.path(), &["--no-tls"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(names(out.path()), vec!["a.png".to_string(), "c.png".into()]);
    assert_eq!(std::fs::read(out.join("c.png")).unwrap(), c.data);
    assert_eq!(ids_of(&json(&o)["corrupt"]), vec![hex(b.id())]);
    assert!(stderr(&o).contains(&hex(b.id())), "{}", stderr(&o));
}

#[test]
fn j39_raw_packet_length_differs_from_list_size_is_corrupt_stream_stays_in_step() {
    let a = Image::new("a.png", rnd(395, 120));
    let b = Image::new("b.png", rnd(396, 500));
    // a is listed with 100 bytes but its (self-consistent) packet carries 120.
    let peer = canned(
        listing(&[entry(a.id(), 0, b"a.png", 100), listed(&b)]),
        jtpd(&[packet(0, a.id(), &a.data), packet(0, b.id(), &b.data)]),
    );
    let out = TempDir::new("j39len");
    let o = get(&peer.addr, out.path(), &["--no-tls"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(names(out.path()), vec!["b.png".to_string()]);
    assert_eq!(std::fs::read(out.join("b.png")).unwrap(), b.data);
    assert_eq!(ids_of(&json(&o)["corrupt"]), vec![hex(a.id())]);
}

#[test]
fn j40_hostile_names_reduce_to_safe_basenames_or_fallback() {
    let hostile: [&[u8]; 10] = [
        b"../x.png",
        b"a/b.png",
        b"c\\d.png",
        b"..",
        b".",
        b"",
        b"a\0b.png",
        b".ferry",
        b".hidden.png",
        b"/etc/passwd.png",
    ];
    let imgs: Vec<(Vec<u8>, Vec<u8>)> = hostile
        .iter()
        .enumerate()
        .map(|(i, n)| (n.to_vec(), rnd(400 + i as u64, 100 + i)))
        .collect();
    let list = listing(
        &imgs
            .iter()
            .map(|(n, d)| entry(xxh(d), 0, n, d.len() as u32))
            .collect::<Vec<_>>(),
    );
    let reply = jtpd(
        &imgs
            .iter()
            .map(|(_, d)| packet(0, xxh(d), d))
            .collect::<Vec<_>>(),
    );
    let peer = canned(list, reply);
    let root = TempDir::new("j40");
    let out = root.join("out");
    let o = get(&peer.addr, &out, &["--no-tls"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        names(root.path()),
        vec!["out".to_string()],
        "something left the output folder"
    );
    let fallback = |i: usize| format!("output_{}.png", hex(xxh(&imgs[i].1)));
    let mut want = vec![
        "x.png".to_string(),
        "b.png".into(),
        "d.png".into(),
        fallback(3),
        fallback(4),
        fallback(5),
        fallback(6),
        fallback(7),
        fallback(8),
        "passwd.png".into(),
    ];
    want.sort();
    let got: Vec<String> = names(&out)
        .into_iter()
        .filter(|n| !(n.starts_with('.') && out.join(n).is_dir()))
        .collect();
    assert_eq!(got, want);
    for n in &got {
        assert!(!n.starts_with('.'), "dotfile {n:?}");
    }
    for (i, (_, d)) in imgs.iter().enumerate() {
        let name = &want
            .iter()
            .find(|n| std::fs::read(out.join(n)).ok().as_ref() == Some(d));
        assert!(name.is_some(), "image {i} not saved intact");
    }
}

#[test]
fn j42_huge_list_count_then_close_is_a_clean_bounded_error() {
    for count in [varint(u32::MAX), varint(10_000_001)] {
        let mut list = b"JTPL".to_vec();
        list.extend(count);
        let peer = canned(list, Vec::new());
        let out = TempDir::new("j42l");
        let (o, took) = get_bounded(&peer.addr, out.path());
        let code = o.status.code();
        assert!(matches!(code, Some(3) | Some(4)), "{code:?} {}", stderr(&o));
        assert!(took < Duration::from_secs(10), "{took:?}");
    }
}

#[test]
fn j42_huge_packet_length_then_close_is_a_clean_bounded_error() {
    let a = Image::new("a.png", rnd(420, 10));
    let mut reply = b"JTPD\x01\x00".to_vec();
    reply.extend(varint(u32::MAX));
    reply.extend(a.id().to_be_bytes());
    reply.extend(rnd(421, 100_000));
    let peer = canned(listing(&[listed(&a)]), reply);
    let out = TempDir::new("j42len");
    let (o, took) = get_bounded(&peer.addr, out.path());
    let code = o.status.code();
    assert!(matches!(code, Some(3) | Some(4)), "{code:?} {}", stderr(&o));
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(!out.join("a.png").exists());
    assert_no_temporaries(out.path());
}

#[test]
fn j42_jtpd_with_more_packets_than_requested_is_a_protocol_error() {
    let a = Image::new("a.png", rnd(422, 10));
    let b = Image::new("b.png", rnd(423, 10));
    // One id listed and asked for; M = 2.
    let peer = canned(
        listing(&[listed(&a)]),
        jtpd(&[packet(0, a.id(), &a.data), packet(0, b.id(), &b.data)]),
    );
    let out = TempDir::new("j42m");
    let (o, took) = get_bounded(&peer.addr, out.path());
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(!out.join("b.png").exists());
}

#[test]
fn j43_zstd_frame_without_content_size_decodes() {
    let a = Image::new("scan.bmp", bmp(430, 360_054));
    let z = zstd_no_size(&a.data);
    let peer = canned(
        listing(&[entry(a.id(), 3, b"scan.bmp", a.data.len() as u32)]),
        jtpd(&[packet(0x0b, a.id(), &z)]),
    );
    let out = TempDir::new("j43");
    let o = get(&peer.addr, out.path(), &["--no-tls"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(std::fs::read(out.join("scan.bmp")).unwrap(), a.data);
    assert_eq!(json(&o)["wire_bytes"].as_u64(), Some(z.len() as u64));
}

#[test]
fn j43_frame_inflating_beyond_list_size_is_rejected_bounded() {
    // 2 GiB of zeros in a tiny frame, listed as 1000 bytes, under a 1 GiB address-space limit;
    // then a good packet, which must still arrive.
    let z = zstd_zero_bomb(2 << 30);
    let bomb_id = 0x0123_4567_89ab_cdef;
    let b = Image::new("b.png", rnd(431, 700));
    let peer = canned(
        listing(&[entry(bomb_id, 3, b"bomb.bmp", 1000), listed(&b)]),
        jtpd(&[packet(0x0b, bomb_id, &z), packet(0, b.id(), &b.data)]),
    );
    let out = TempDir::new("j43bomb");
    let (o, took) = get_bounded(&peer.addr, out.path());
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(names(out.path()), vec!["b.png".to_string()]);
    assert_eq!(ids_of(&json_of(&o)["corrupt"]), vec![hex(bomb_id)]);
}

#[test]
fn j43_second_frame_or_trailing_bytes_make_the_packet_corrupt() {
    let a = Image::new("a.bmp", bmp(432, 20_000));
    let b = Image::new("b.png", rnd(433, 700));
    let mut two = zstd_no_size(&a.data[..10_000]);
    two.extend(zstd_no_size(&a.data[10_000..]));
    let mut trailing = zstd_no_size(&a.data);
    trailing.extend_from_slice(b"junk");
    for data in [two, trailing] {
        let peer = canned(
            listing(&[entry(a.id(), 3, b"a.bmp", 20_000), listed(&b)]),
            jtpd(&[packet(0x0b, a.id(), &data), packet(0, b.id(), &b.data)]),
        );
        let out = TempDir::new("j43two");
        let (o, _) = get_bounded(&peer.addr, out.path());
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert_eq!(names(out.path()), vec!["b.png".to_string()]);
    }
}

#[test]
fn j44_jtpe_at_every_boundary_reports_code_and_message() {
    let a = Image::new("a.png", rnd(440, 300));
    let b = Image::new("b.png", rnd(441, 300));
    // Before any request: the frame arrives right after accept.
    let early = Peer::plain(Arc::new(|_, _, w| {
        w.write_all(&jtpe(99, "go away early"))?;
        Ok(Flow::Close)
    }));
    // As the LIST reply, with an unknown code.
    let on_list = canned(jtpe(99, "custom trouble"), Vec::new());
    // Between packets of a GET.
    let mut mid = jtpd(&[packet(0, a.id(), &a.data), packet(0, b.id(), &b.data)]);
    mid.truncate(5 + packet(0, a.id(), &a.data).len());
    mid.extend(jtpe(3, "between packets"));
    let between = canned(listing(&[listed(&a), listed(&b)]), mid);
    for (peer, want) in [
        (&early, "error 99: go away early"),
        (&on_list, "error 99: custom trouble"),
        (&between, "error 3: between packets"),
    ] {
        let out = TempDir::new("j44");
        let (o, took) = get_bounded(&peer.addr, out.path());
        assert_eq!(o.status.code(), Some(4), "{want}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{want}: {}", stderr(&o));
        assert!(took < Duration::from_secs(10));
        assert!(
            !out.join("b.png").exists(),
            "{want}: {:?}",
            names(out.path())
        );
        assert_no_temporaries(out.path());
    }
}

#[test]
fn j44_jtpe_instead_of_jtpd_or_jtpb() {
    let a = Image::new("a.png", rnd(442, 300));
    for batch in [false, true] {
        let peer = canned(listing(&[listed(&a)]), jtpe(2, "reserved flags set"));
        let out = TempDir::new("j44get");
        let mut extra = vec!["--no-tls"];
        if batch {
            extra.push("--batch");
        }
        let o = get(&peer.addr, out.path(), &extra);
        assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("error 2: reserved flags set"),
            "{}",
            stderr(&o)
        );
        assert!(harness::tree(out.path()).is_empty());
    }
}

#[test]
fn j42_framing_errors_end_cleanly_and_completed_files_stay() {
    let a = Image::new("a.png", rnd(450, 3000));
    let b = Image::new("b.png", rnd(451, 3000));
    let list = listing(&[listed(&a), listed(&b)]);
    let good_a = packet(0, a.id(), &a.data);
    let mut cut = jtpd(&[good_a.clone(), packet(0, b.id(), &b.data)]);
    cut.truncate(cut.len() - 1000); // EOF inside b's packet
    let mut bits = jtpd(&[good_a.clone(), packet(0, b.id(), &b.data)]);
    bits[5 + good_a.len()] = 0x10; // "encrypted" bit on b's packet
    let stranger = rnd(452, 100);
    let not_asked = jtpd(&[good_a.clone(), packet(0, xxh(&stranger), &stranger)]);
    let mut magic = b"XXXX\x02".to_vec();
    magic.extend_from_slice(&good_a);
    let mut older = good_a.clone(); // the older generation: bare packets, no JTPD
    older.extend(packet(0, b.id(), &b.data));
    let cases: [(&str, Vec<u8>, &[i32]); 5] = [
        ("eof inside a packet", cut, &[3, 4]),
        ("flag bit 4", bits, &[4]),
        ("id not requested", not_asked, &[4]),
        ("unknown magic", magic, &[4]),
        ("older server", older, &[4]),
    ];
    for (what, reply, codes) in cases {
        let peer = canned(list.clone(), reply);
        let out = TempDir::new("j42frame");
        let (o, took) = get_bounded(&peer.addr, out.path());
        let code = o.status.code().unwrap_or(-1);
        assert!(codes.contains(&code), "{what}: exit {code}: {}", stderr(&o));
        assert!(took < Duration::from_secs(10), "{what}: {took:?}");
        assert!(!out.join("b.png").exists(), "{what}");
        assert_no_temporaries(out.path());
        let names = names(out.path());
        assert!(names.iter().all(|n| n == "a.png"), "{what}: {names:?}");
        if what == "eof inside a packet" {
            // The packet completed before the failure stays.
            assert_eq!(std::fs::read(out.join("a.png")).unwrap(), a.data);
        }
        if what == "older server" {
            assert!(stderr(&o).contains("older"), "{what}: {}", stderr(&o));
        }
    }
}

#[test]
fn j40_more_hostile_names_whitespace_long_noext_control_nfd() {
    let long = format!("{}.png", "n".repeat(300));
    let hostile: Vec<&[u8]> = vec![
        b"  spaced.png  ",
        long.as_bytes(),
        b"noext",
        b"bell\x07.png",
        "cafe\u{301}.png".as_bytes(),
        b"dir\\..\\..\\up.png",
    ];
    let imgs: Vec<(Vec<u8>, Vec<u8>)> = hostile
        .iter()
        .enumerate()
        .map(|(i, n)| (n.to_vec(), rnd(460 + i as u64, 50 + i)))
        .collect();
    let list = listing(
        &imgs
            .iter()
            .map(|(n, d)| entry(xxh(d), 0, n, d.len() as u32))
            .collect::<Vec<_>>(),
    );
    let reply = jtpd(
        &imgs
            .iter()
            .map(|(_, d)| packet(0, xxh(d), d))
            .collect::<Vec<_>>(),
    );
    let peer = canned(list, reply);
    let root = TempDir::new("j40b");
    let out = root.join("out");
    let o = get(&peer.addr, &out, &["--no-tls"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(names(root.path()), vec!["out".to_string()]);
    let fallback = |i: usize| format!("output_{}.png", hex(xxh(&imgs[i].1)));
    let mut want = vec![
        "spaced.png".to_string(),
        fallback(1),
        "noext.png".into(),
        fallback(3),
        "caf\u{e9}.png".into(),
        "up.png".into(),
    ];
    want.sort();
    let got: Vec<String> = names(&out)
        .into_iter()
        .filter(|n| !(n.starts_with('.') && out.join(n).is_dir()))
        .collect();
    assert_eq!(got, want);
    for (i, (_, d)) in imgs.iter().enumerate() {
        let found = want
            .iter()
            .any(|n| std::fs::read(out.join(n)).ok().as_ref() == Some(d));
        assert!(found, "image {i} not saved intact");
    }
}

#[test]
fn j47_reference_rate_limit_jtpe5_inside_tls() {
    let certs = TempDir::new("j47rlcerts");
    assert!(ferry(&["certs", "--out", s(certs.path())], T)
        .status
        .success());
    let peer = Peer::tls(
        &certs.join("cert.pem"),
        &certs.join("key.pem"),
        &[],
        ref_server(mixed_images(), Some(1)),
    );
    let out = TempDir::new("j47rltls");
    let o = get(
        &peer.addr,
        out.path(),
        &[
            "--cert",
            s(&certs.join("ca.pem")),
            "--server-name",
            "localhost",
        ],
    );
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("error 5: too many requests"),
        "{}",
        stderr(&o)
    );
    assert!(harness::tree(out.path()).is_empty());
}

#[test]
fn j37_ferry_serve_all_protocols_entry_point() {
    let src = TempDir::new("j37serve");
    write_images(src.path(), &mixed_images());
    let server = Server::start(
        &[
            "serve",
            s(src.path()),
            "--jtp-bind",
            "127.0.0.1:0",
            "--no-tls",
        ],
        1,
    );
    let out = TempDir::new("j37serveout");
    let o = get(&server.addr("jtp"), out.path(), &["--no-tls", "-k"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(harness::tree(out.path()), harness::tree(src.path()));
}

/// Sends `sig` to a child process we started.
fn signal(child: &std::process::Child, sig: i32) {
    // SAFETY: kill(2) on the pid of our own child.
    unsafe { libc::kill(child.id() as i32, sig) };
}

#[test]
fn j45_watch_prints_events_and_cancels_with_03_00_on_ctrl_c() {
    // An emulated server: answers WATCH with one event for an empty `café.gif`, then waits for
    // the client's CANCEL and acknowledges it.
    let cancel = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let c2 = cancel.clone();
    let peer = Peer::plain(Arc::new(move |_, req, rw| {
        match req {
            Req::Connect => return Ok(Flow::Next),
            Req::Watch => {
                let mut ev = b"JTPW".to_vec();
                ev.extend_from_slice(&0xef46db3751d8e999u64.to_be_bytes());
                ev.push(4);
                ev.extend_from_slice(&[0, 9]);
                ev.extend_from_slice("caf\u{e9}.gif".as_bytes());
                ev.push(0);
                rw.write_all(&ev)?;
                rw.flush()?;
                let mut two = [0u8; 2];
                rw.read_exact(&mut two)?;
                c2.lock().unwrap().extend_from_slice(&two);
                rw.write_all(b"JTPC")?;
            }
            _ => {}
        }
        Ok(Flow::Close)
    }));
    let mut child = Command::new(FERRY)
        .args(["jtp", "get", "--no-tls", "-w", "--addr", &peer.addr])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(l);
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(15));
    // Let the client block in its next read: Ctrl-C must not turn into an i/o error.
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, libc::SIGINT);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ferry jtp get -w did not stop after Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    assert_eq!(
        line.unwrap(),
        "NEW  id=ef46db3751d8e999 type=4 size=0 name=caf\u{e9}.gif"
    );
    assert_eq!(status.code(), Some(0), "{err}");
    assert_eq!(peer.requests(), vec![(0, Req::Watch)]);
    assert_eq!(*cancel.lock().unwrap(), vec![3, 0]);
}

#[test]
fn j45_watch_against_ferry_server_sees_new_file() {
    let src = TempDir::new("j45watch");
    write_images(src.path(), &mixed_images()[..1]);
    let server = serve(src.path(), &["--no-tls", "--watch-interval", "1"]);
    let mut child = Command::new(FERRY)
        .args([
            "jtp",
            "get",
            "--no-tls",
            "-w",
            "--json",
            "--addr",
            &server.addr("jtp"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(l);
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let data = rnd(470, 4321);
    std::fs::write(src.join("new.webp"), &data).unwrap();
    let line = rx.recv_timeout(Duration::from_secs(15));
    // Let the client block in its next read: Ctrl-C must not turn into an i/o error.
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, libc::SIGINT);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ferry jtp get -w did not stop after Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    let ev: serde_json::Value = serde_json::from_str(&line.expect("no WATCH event")).unwrap();
    assert_eq!(ev["id"], hex(xxh(&data)).as_str());
    assert_eq!(ev["name"], "new.webp");
    assert_eq!(ev["size"], 4321);
    assert_eq!(ev["type"], 2);
    assert_eq!(status.code(), Some(0), "{err}");
}

#[test]
fn j41_double_ctrl_c_mid_transfer_exits_130_without_partial_file() {
    let data = rnd(480, 4 << 20);
    let id = xxh(&data);
    let list = listing(&[entry(id, 0, b"big.png", data.len() as u32)]);
    let mut head = b"JTPD\x01".to_vec();
    head.extend(packet(0, id, &data)[..(1 << 20) + 20].to_vec());
    let peer = Peer::plain(Arc::new(move |_, req, w| match req {
        Req::Connect => Ok(Flow::Next),
        Req::List { .. } => {
            w.write_all(&list)?;
            Ok(Flow::Next)
        }
        _ => {
            w.write_all(&head)?;
            Ok(Flow::Stall(Duration::from_secs(15)))
        }
    }));
    let out = TempDir::new("j41int");
    let mut child = Command::new(FERRY)
        .args([
            "jtp",
            "get",
            "--no-tls",
            "--addr",
            &peer.addr,
            "--out",
            s(out.path()),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while peer.requests().len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    signal(&child, libc::SIGINT);
    std::thread::sleep(Duration::from_millis(100));
    signal(&child, libc::SIGINT);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ferry jtp get did not stop after two Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130));
    assert!(!out.join("big.png").exists());
    for n in names(out.path()) {
        assert!(n.starts_with('.'), "{n:?}");
    }
}

#[test]
fn j45_ctrl_c_during_keep_alive_repeats_exits_130_cleanly() {
    let src = TempDir::new("j45int");
    write_images(src.path(), &mixed_images());
    let server = serve(src.path(), &["--no-tls"]);
    let out = TempDir::new("j45intout");
    let mut child = Command::new(FERRY)
        .args([
            "jtp", "get", "--no-tls", "-k", "--repeat", "1000000", "--json",
        ])
        .args(["--addr", &server.addr("jtp"), "--out", s(out.path())])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read stdout while the child runs: its JSON grows with every repeat.
    let mut child_out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = child_out.read_to_end(&mut v);
        v
    });
    std::thread::sleep(Duration::from_millis(1500));
    signal(&child, libc::SIGINT);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ferry jtp get did not stop after Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    let stdout = reader.join().unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    let j: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
    assert_eq!(j["cancelled"], true);
    assert_eq!(harness::tree(out.path()), harness::tree(src.path()));
    assert_no_temporaries(out.path());
}

#[test]
fn j40_list_and_get_id_absent_from_list_gets_fallback_name() {
    let a = Image::new("a.png", rnd(490, 400));
    let b = Image::new("b.gif", rnd(491, 500));
    let mut jtpg = b"JTPG".to_vec();
    jtpg.extend(varint(2));
    jtpg.extend(packet(0, a.id(), &a.data));
    jtpg.extend(packet(4, b.id(), &b.data));
    let peer = canned(listing(&[listed(&a)]), jtpg);
    let out = TempDir::new("j40lag");
    let o = get(&peer.addr, out.path(), &["--no-tls", "--list-and-get"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let fallback = format!("output_{}.gif", hex(b.id()));
    let mut want = vec!["a.png".to_string(), fallback.clone()];
    want.sort();
    assert_eq!(names(out.path()), want);
    assert_eq!(std::fs::read(out.join(&fallback)).unwrap(), b.data);
}

#[test]
fn j38_batch_sends_the_ids_of_local_non_dot_files() {
    let imgs = mixed_images();
    let peer = Peer::plain(ref_server(imgs.clone(), None));
    let out = TempDir::new("j38have");
    std::fs::write(out.join("held.png"), &imgs[0].data).unwrap();
    std::fs::write(out.join("other.txt"), b"local only").unwrap();
    std::fs::write(out.join(".hidden.png"), &imgs[1].data).unwrap();
    let o = get(&peer.addr, out.path(), &["--no-tls", "--batch"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let have: Vec<Vec<u64>> = peer
        .requests()
        .into_iter()
        .filter_map(|(_, r)| match r {
            Req::Batch { have, .. } => Some(have),
            _ => None,
        })
        .collect();
    assert_eq!(have.len(), 1, "{:?}", peer.requests());
    let mut got = have[0].clone();
    got.sort();
    let mut want = vec![imgs[0].id(), xxh(b"local only")];
    want.sort();
    assert_eq!(got, want, "have-set: every regular non-dot file");
    // Only the images missing locally were saved (the hidden one counts as missing).
    let j = json(&o);
    assert_eq!(j["saved"].as_array().unwrap().len(), imgs.len() - 1);
}

#[test]
fn j44_jtpe_message_is_read_lossily() {
    let mut frame = b"JTPE\x07\x00\x04".to_vec();
    frame.extend_from_slice(b"a\xff\xfeb");
    let peer = canned(frame, Vec::new());
    let out = TempDir::new("j44lossy");
    let (o, _) = get_bounded(&peer.addr, out.path());
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("error 7: a\u{fffd}\u{fffd}b"),
        "{}",
        stderr(&o)
    );
}

/// A TLS client meeting a plain server: `jtp get` without `--no-tls`.
fn tls_get_from_plain_server() -> Output {
    let src = TempDir::new("j45plain");
    write_images(src.path(), &mixed_images()[..1]);
    let server = serve(src.path(), &["--no-tls"]);
    let out = TempDir::new("j45plainout");
    let started = Instant::now();
    let o = get(
        &server.addr("jtp"),
        out.path(),
        &["--server-name", "localhost"],
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(harness::tree(out.path()).is_empty());
    o
}

#[test]
fn j45_tls_client_against_plain_server_fails_fast_with_exit_3() {
    let o = tls_get_from_plain_server();
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
}

/// Spec 5.1: "a record-layer error on the first TLS read SHOULD suggest `--no-tls`".
#[test]
fn j45_tls_client_against_plain_server_suggests_no_tls() {
    let o = tls_get_from_plain_server();
    assert!(stderr(&o).contains("--no-tls"), "{}", stderr(&o));
}

#[test]
fn j45_aliases_and_jtp_url_positional_address() {
    let src = TempDir::new("j45alias");
    write_images(src.path(), &mixed_images());
    let server = serve(src.path(), &["--plain"]);
    let url = format!("jtp://{}", server.addr("jtp"));
    let out = TempDir::new("j45aliasout");
    let o = ferry(
        &[
            "jtp",
            "get",
            &url,
            "--plain",
            "--output",
            s(out.path()),
            "--verbose",
            "--delta",
        ],
        T,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(harness::tree(out.path()), harness::tree(src.path()));
    // `--addr` also takes the jtp:// prefix.
    let out = TempDir::new("j45aliasout2");
    let o = get(
        &url,
        out.path(),
        &["--plain", "--parallel", "2", "--keep-alive"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(harness::tree(out.path()), harness::tree(src.path()));
    // `jtp list` of an empty catalog: nothing to do, exit 1.
    let empty = TempDir::new("j45empty");
    let server = serve(empty.path(), &["--no-tls"]);
    let o = ferry(
        &[
            "jtp",
            "list",
            "--no-tls",
            "--addr",
            &server.addr("jtp"),
            "--json",
        ],
        T,
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let l: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(l, serde_json::json!([]));
}

/// A server that sends the first MiB of a 4 MiB image and then goes silent.
fn stalling_peer() -> Peer {
    let data = rnd(495, 4 << 20);
    let id = xxh(&data);
    let list = listing(&[entry(id, 0, b"big.png", data.len() as u32)]);
    let mut head = b"JTPD\x01".to_vec();
    head.extend(packet(0, id, &data)[..(1 << 20) + 20].to_vec());
    Peer::plain(Arc::new(move |_, req, w| match req {
        Req::Connect => Ok(Flow::Next),
        Req::List { .. } => {
            w.write_all(&list)?;
            Ok(Flow::Next)
        }
        _ => {
            w.write_all(&head)?;
            Ok(Flow::Stall(Duration::from_secs(15)))
        }
    }))
}

/// Issue: a read timeout said "Resource temporarily unavailable (os error 11)"; and the
/// progress line sat at `0 images 0.0 MB` during a large image. Bytes count as they arrive,
/// and the line is drawn on a terminal only.
#[test]
fn j45_stalled_image_shows_its_bytes_on_a_terminal_and_times_out_in_words() {
    let peer = stalling_peer();
    let out = TempDir::new("j45stall");
    let args = [
        "jtp",
        "get",
        "--no-tls",
        "--io-timeout",
        "2",
        "--addr",
        &peer.addr,
        "--out",
        s(out.path()),
    ];
    let (code, tty) = crate::jtp_peers::ferry_with_tty_stderr(&args, Duration::from_secs(20));
    assert_eq!(code, Some(3), "{tty}");
    assert!(tty.contains("timed out after 2 s"), "{tty:?}");
    assert!(!tty.contains("os error"), "{tty:?}");
    // 1 MiB of the image arrived before the stall: the line shows it against the listed size.
    assert!(tty.contains("0 / 1 images  1.0 / 4.2 MB"), "{tty:?}");
    assert!(tty.contains("\r\x1b[K"), "{tty:?}");
    assert!(!out.join("big.png").exists());
    assert_no_temporaries(out.path());

    // Not a terminal: no progress line, no escape sequence.
    let peer = stalling_peer();
    let out = TempDir::new("j45stallpipe");
    let mut args = args.to_vec();
    args[6] = &peer.addr;
    args[8] = s(out.path());
    let o = ferry(&args, T);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("timed out after 2 s"), "{}", stderr(&o));
    assert!(!stderr(&o).contains('\x1b'), "{:?}", stderr(&o));
    assert!(!stderr(&o).contains("MB/s"), "{:?}", stderr(&o));
}

// ---------------------------------------------------------------------------------------------
// Issue 12 (what a new user and a hostile peer found) and issue 15 items 10 and 12, client side.

/// Spawns `ferry ARGS...` with stdout and stderr piped and read on threads; returns the child
/// and the readers.
fn spawn_ferry(
    args: &[&str],
) -> (
    std::process::Child,
    std::thread::JoinHandle<Vec<u8>>,
    std::thread::JoinHandle<Vec<u8>>,
) {
    let mut child = Command::new(FERRY)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut o = child.stdout.take().unwrap();
    let mut e = child.stderr.take().unwrap();
    let to = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = o.read_to_end(&mut v);
        v
    });
    let te = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = e.read_to_end(&mut v);
        v
    });
    (child, to, te)
}

/// Waits (up to `limit`) for the child to exit; kills it and panics past that.
fn wait_exit(child: &mut std::process::Child, limit: Duration, what: &str) -> (i32, Duration) {
    let started = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return (st.code().unwrap_or(-1), started.elapsed());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Polls `cond` every 5 ms for up to 20 s; panics with `what` if it never holds.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The streaming temporaries (`.ferry-*.part`) in `dir`, with the bytes the file system holds
/// for each.
fn temporaries(dir: &Path) -> Vec<(String, u64)> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".ferry-") && n.ends_with(".part"))
        .filter_map(|n| {
            let m = std::fs::metadata(dir.join(&n)).ok()?;
            Some((n, m.blocks() * 512))
        })
        .collect()
}

/// Names a hostile server lists: a newline that forges a row, an OSC title sequence, DEL, a
/// C1 CSI, a bidi override.
const HOSTILE_NAMES: [&str; 5] = [
    "evil\nffffffffffffffff  png         1  forged.png",
    "\x1b]0;pwned\x07title.png",
    "del\x7f.gif",
    "c1\u{9b}31mred.png",
    "rlo\u{202e}gnp.exe",
];

/// True when `text` holds a control character other than the newlines ending its lines, or a
/// bidi override.
fn has_raw_controls(text: &str) -> bool {
    text.chars()
        .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}')
}

/// Issue 12: `jtp list` and `jtp get --watch` printed server-supplied names raw: a newline
/// forged rows and escape sequences reached the terminal. Human output escapes them; `--json`
/// keeps the names as sent (JSON-escaped).
#[test]
fn list_and_watch_escape_what_a_hostile_server_names() {
    let entries: Vec<Vec<u8>> = HOSTILE_NAMES
        .iter()
        .enumerate()
        .map(|(i, n)| entry(i as u64 + 1, 0, n.as_bytes(), 10))
        .collect();
    let peer = canned(listing(&entries), Vec::new());
    let o = ferry(&["jtp", "list", "--no-tls", "--addr", &peer.addr], T);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout.clone()).unwrap();
    assert_eq!(text.lines().count(), HOSTILE_NAMES.len(), "{text:?}");
    assert!(!has_raw_controls(&text), "{text:?}");
    assert!(text.contains("evil\\nffffffffffffffff"), "{text:?}");
    assert!(text.contains("\\x1b]0;pwned\\x07title.png"), "{text:?}");
    assert!(text.contains("del\\x7f.gif"), "{text:?}");
    assert!(text.contains("c1\\u{9b}31mred.png"), "{text:?}");
    assert!(text.contains("rlo\\u{202e}gnp.exe"), "{text:?}");
    let o = ferry(
        &["jtp", "list", "--no-tls", "--json", "--addr", &peer.addr],
        T,
    );
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let listed: Vec<&str> = j
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, HOSTILE_NAMES);

    // WATCH events carry names too.
    let peer = Peer::plain(Arc::new(move |_, req, rw| {
        if *req == Req::Watch {
            for (i, name) in HOSTILE_NAMES.iter().enumerate() {
                let mut ev = b"JTPW".to_vec();
                ev.extend_from_slice(&(i as u64 + 1).to_be_bytes());
                ev.push(0);
                ev.extend_from_slice(&(name.len() as u16).to_be_bytes());
                ev.extend_from_slice(name.as_bytes());
                ev.push(10);
                rw.write_all(&ev)?;
            }
            rw.flush()?;
            let mut two = [0u8; 2];
            rw.read_exact(&mut two)?;
            rw.write_all(b"JTPC")?;
            return Ok(Flow::Close);
        }
        Ok(Flow::Next)
    }));
    let (mut child, to, te) = spawn_ferry(&["jtp", "get", "--no-tls", "-w", "--addr", &peer.addr]);
    wait_until("the WATCH request", || !peer.requests().is_empty());
    // The events are written at once; give the client a moment to print them.
    std::thread::sleep(Duration::from_millis(500));
    signal(&child, libc::SIGINT);
    let (code, _) = wait_exit(
        &mut child,
        Duration::from_secs(10),
        "jtp get -w after Ctrl-C",
    );
    let text = String::from_utf8(to.join().unwrap()).unwrap();
    let err = String::from_utf8_lossy(&te.join().unwrap()).into_owned();
    assert_eq!(code, 0, "{err}");
    assert_eq!(text.lines().count(), HOSTILE_NAMES.len(), "{text:?}");
    assert!(text.lines().all(|l| l.starts_with("NEW  id=")), "{text:?}");
    assert!(!has_raw_controls(&text), "{text:?}");
}

/// Issue 12: "1 missing" did not say which image; and `jtp get` exited 130 when Ctrl-C came
/// after every image was saved.
#[test]
fn missing_images_are_named_and_a_ctrl_c_after_the_last_image_still_exits_0() {
    let a = Image::new("a.png", rnd(1201, 3000));
    let b = Image::new("beta.gif", rnd(1202, 2000));
    let peer = canned(
        listing(&[listed(&a), listed(&b)]),
        jtpd(&[packet(0, a.id(), &a.data)]),
    );
    let out = TempDir::new("i12missing");
    let o = ferry(
        &[
            "jtp",
            "get",
            "--no-tls",
            "--addr",
            &peer.addr,
            "--out",
            s(out.path()),
        ],
        T,
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("1 missing: {} (beta.gif)", hex(b.id()))),
        "{}",
        stderr(&o)
    );

    // The whole answer comes, then the server keeps the connection open: the client lingers
    // on close, and the Ctrl-C lands there, after the image was saved.
    let list = listing(&[listed(&a)]);
    let reply = jtpd(&[packet(0, a.id(), &a.data)]);
    let peer = Peer::plain(Arc::new(move |_, req, w| match req {
        Req::Connect => Ok(Flow::Next),
        Req::List { .. } => {
            w.write_all(&list)?;
            Ok(Flow::Next)
        }
        _ => {
            w.write_all(&reply)?;
            Ok(Flow::Stall(Duration::from_secs(5)))
        }
    }));
    let out = TempDir::new("i12late");
    let (mut child, _to, te) = spawn_ferry(&[
        "jtp",
        "get",
        "--no-tls",
        "--addr",
        &peer.addr,
        "--out",
        s(out.path()),
    ]);
    wait_until("a.png", || out.join("a.png").exists());
    signal(&child, libc::SIGINT);
    let (code, _) = wait_exit(&mut child, Duration::from_secs(10), "jtp get");
    let err = String::from_utf8_lossy(&te.join().unwrap()).into_owned();
    assert_eq!(code, 0, "every image was saved: {err}");
    assert_eq!(std::fs::read(out.join("a.png")).unwrap(), a.data);
}

/// A peer listing one image of `size` bytes under `id` and answering any GET with the first
/// `sent` bytes of its packet (data of zeros), then staying silent for 20 s. `written` is set
/// once those bytes are handed to the kernel.
fn stalling_big_peer(
    id: u64,
    listed_as: Option<u64>,
    size: u32,
    sent: usize,
) -> (Peer, Arc<std::sync::atomic::AtomicBool>) {
    let written = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let w2 = written.clone();
    let list = match listed_as {
        Some(l) => listing(&[entry(l, 0, b"big.png", size)]),
        None => listing(&[entry(0x1111, 0, b"small.png", 10)]),
    };
    let peer = Peer::plain(Arc::new(move |_, req, w| match req {
        Req::Connect => Ok(Flow::Next),
        Req::List { .. } => {
            w.write_all(&list)?;
            Ok(Flow::Next)
        }
        _ => {
            let mut head = b"JTPD\x01".to_vec();
            head.push(0);
            head.extend(varint(size));
            head.extend_from_slice(&id.to_be_bytes());
            w.write_all(&head)?;
            let zeros = vec![0u8; 1 << 20];
            for _ in 0..sent >> 20 {
                w.write_all(&zeros)?;
            }
            w.flush()?;
            w2.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(Flow::Stall(Duration::from_secs(20)))
        }
    }));
    (peer, written)
}

/// Issues 12 and 15 item 12: Ctrl-C of `jtp get` waited for the whole current image (3.8 s for
/// 1 GiB), or for the io timeout when the server stalled; and the client preallocated the
/// 4 GiB the server announced before any byte came. Now Ctrl-C stops the worker within a
/// fraction of a second (measured: about 0.2 s) with exit 130 and no temporary left, and
/// while the image arrives the disk holds about what arrived, not what was announced.
#[test]
fn ctrl_c_mid_image_stops_at_once_and_the_announced_size_is_never_preallocated() {
    let size = u32::MAX - 1;
    let (peer, written) = stalling_big_peer(0xb16, Some(0xb16), size, 8 << 20);
    let out = TempDir::new("i12ctrlc");
    let (mut child, _to, te) = spawn_ferry(&[
        "jtp",
        "get",
        "--no-tls",
        "-p",
        "2",
        "--addr",
        &peer.addr,
        "--out",
        s(out.path()),
    ]);
    wait_until("the server's 8 MiB", || {
        written.load(std::sync::atomic::Ordering::SeqCst)
    });
    wait_until("a temporary", || !temporaries(out.path()).is_empty());
    let held: u64 = temporaries(out.path()).iter().map(|(_, b)| b).sum();
    assert!(
        held < 256 << 20,
        "{held} bytes held on disk for an image of which at most 8 MiB arrived"
    );
    signal(&child, libc::SIGINT);
    // The server stays silent for 20 s: only the client's own stop can end the run sooner.
    let (code, took) = wait_exit(&mut child, Duration::from_secs(15), "jtp get after Ctrl-C");
    let err = String::from_utf8_lossy(&te.join().unwrap()).into_owned();
    assert_eq!(code, 130, "{err}");
    assert!(took < Duration::from_secs(10), "stopped after {took:?}");
    assert!(
        temporaries(out.path()).is_empty(),
        "{:?}",
        names(out.path())
    );

    // A kill leaves the temporary; the next run into the folder removes it.
    let (peer, written) = stalling_big_peer(0xb16, Some(0xb16), size, 2 << 20);
    let (mut child, _to, _te) = spawn_ferry(&[
        "jtp",
        "get",
        "--no-tls",
        "--addr",
        &peer.addr,
        "--out",
        s(out.path()),
    ]);
    wait_until("the server's 2 MiB", || {
        written.load(std::sync::atomic::Ordering::SeqCst)
    });
    wait_until("a temporary", || !temporaries(out.path()).is_empty());
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(temporaries(out.path()).len(), 1, "kill -9 leaves it");
    let src = TempDir::new("i12ctrlcsrc");
    write_images(src.path(), &mixed_images()[..1]);
    let server = serve(src.path(), &["--no-tls"]);
    let o = get(&server.addr("jtp"), out.path(), &["--no-tls"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("removed 1 temporary file"),
        "{}",
        stderr(&o)
    );
    assert!(
        temporaries(out.path()).is_empty(),
        "{:?}",
        names(out.path())
    );
}

/// Issue 15 item 10: output for an id the LIST did not name could reach 4 GiB on disk before
/// its id check failed. Such a packet may make at most the largest listed size (16 MiB at
/// least): a 4 GiB one is read and dropped as corrupt, and nothing of it reaches the disk.
#[test]
fn an_unlisted_id_announcing_4_gib_puts_nothing_on_disk() {
    let (peer, written) = stalling_big_peer(0xbad, None, u32::MAX - 1, 64 << 20);
    let out = TempDir::new("i15unlisted");
    let (mut child, _to, te) = spawn_ferry(&[
        "jtp",
        "get",
        "--no-tls",
        "--addr",
        &peer.addr,
        "--out",
        s(out.path()),
        &hex(0xbad),
    ]);
    // 64 MiB handed to the kernel: the client has read all but what the socket buffers hold.
    wait_until("the server's 64 MiB", || {
        written.load(std::sync::atomic::Ordering::SeqCst)
    });
    assert!(
        temporaries(out.path()).is_empty(),
        "{:?}",
        temporaries(out.path())
    );
    signal(&child, libc::SIGINT);
    let (code, _) = wait_exit(&mut child, Duration::from_secs(15), "jtp get after Ctrl-C");
    let err = String::from_utf8_lossy(&te.join().unwrap()).into_owned();
    assert_eq!(code, 130, "{err}");
    assert!(names(out.path()).is_empty(), "{:?}", names(out.path()));
}
