//! Behaviour tests of the catalog against real temporary folders.

use super::*;
use std::os::unix::ffi::OsStringExt;
use std::sync::atomic::{AtomicU64, Ordering};

/// A fresh folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "ferry-catalog-{tag}-{}-{nanos}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open(dir: &TempDir) -> Arc<CatalogHandle> {
    CatalogHandle::open(dir.path(), CatalogOptions::default()).unwrap()
}

fn names(c: &Catalog) -> Vec<&str> {
    c.entries().iter().map(|e| e.name.as_str()).collect()
}

fn xxh(bytes: &[u8]) -> u64 {
    twox_hash::XxHash64::oneshot(0, bytes)
}

/// File times come from a coarse kernel clock; let it tick before rewriting a file in place.
fn let_clock_tick() {
    std::thread::sleep(Duration::from_millis(30));
}

#[test]
fn creates_root_and_state_dir() {
    let parent = TempDir::new("create");
    let root = parent.path().join("served");
    let h = CatalogHandle::open(&root, CatalogOptions::default()).unwrap();
    assert!(root.is_dir());
    assert!(h.state_dir().is_dir());
    assert_eq!(h.state_dir(), root.join(".ferry"));
    assert!(h.state_dir().join("index").is_file());
    assert_eq!(h.root(), root);
    let snap = h.snapshot();
    assert!(snap.is_empty());
    assert_eq!(snap.generation(), 1);
}

#[test]
fn known_hash_vectors() {
    let dir = TempDir::new("vectors");
    dir.write("abc.txt", b"abc");
    dir.write("empty.png", b"");
    let h = open(&dir);
    let snap = h.snapshot();
    let empty = snap.by_name("empty.png").unwrap();
    assert_eq!(empty.xxh64, 0xef46db3751d8e999);
    assert_eq!(empty.xxh64_hex(), "ef46db3751d8e999");
    assert_eq!(empty.size, 0);
    let abc = snap.by_name("abc.txt").unwrap();
    assert_eq!(
        abc.sha256_hex(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(abc.xxh64, xxh(b"abc"));
    assert_eq!(abc.xxh64_hex().len(), 16);
    assert_eq!(snap.by_sha256(&abc.sha256).unwrap().name, "abc.txt");
    assert_eq!(snap.by_xxh64(abc.xxh64).unwrap().name, "abc.txt");
    assert!(snap.by_xxh64(1).is_none());
    assert!(snap.by_sha256(&[0; 32]).is_none());
    assert!(snap.by_name("nope").is_none());
}

#[test]
fn holds_every_regular_file_in_name_byte_order() {
    let dir = TempDir::new("order");
    for n in ["b.gif", "a.png", "B.txt", "z", "\u{e9}.jpg"] {
        dir.write(n, n.as_bytes());
    }
    let h = open(&dir);
    assert_eq!(
        names(&h.snapshot()),
        ["B.txt", "a.png", "b.gif", "z", "\u{e9}.jpg"]
    );
    let r = h.last_report();
    assert_eq!((r.files, r.hashed, r.reused), (5, 5, 0));
    assert!(r.changed);
}

#[test]
fn identical_content_gives_two_entries_and_first_name_wins() {
    let dir = TempDir::new("dup");
    dir.write("b.png", b"same bytes");
    dir.write("a.png", b"same bytes");
    let h = open(&dir);
    let snap = h.snapshot();
    assert_eq!(snap.len(), 2);
    assert_eq!(snap.entries()[0].xxh64, snap.entries()[1].xxh64);
    assert_eq!(snap.by_xxh64(xxh(b"same bytes")).unwrap().name, "a.png");
    assert_eq!(
        snap.by_sha256(&snap.entries()[1].sha256).unwrap().name,
        "a.png"
    );
}

#[test]
fn nfd_name_is_listed_as_nfc_and_path_stays_on_disk() {
    let dir = TempDir::new("nfc");
    let nfd = "cafe\u{301}.png";
    let p = dir.write(nfd, b"x");
    let h = open(&dir);
    let snap = h.snapshot();
    let e = snap.by_name("caf\u{e9}.png").unwrap();
    assert_eq!(e.name, "caf\u{e9}.png");
    assert_eq!(e.path, p);
    assert!(snap.by_name(nfd).is_none());
    // Two spellings of one NFC name: both kept, tie broken by xxh64.
    dir.write("caf\u{e9}.png", b"y");
    h.rescan().unwrap();
    let snap = h.snapshot();
    assert_eq!(snap.len(), 2);
    let ids: Vec<u64> = snap.entries().iter().map(|e| e.xxh64).collect();
    assert!(ids[0] < ids[1]);
    assert_eq!(snap.by_name("caf\u{e9}.png").unwrap().xxh64, ids[0]);
}

#[test]
fn exclusions() {
    let dir = TempDir::new("excl");
    let outside = TempDir::new("excl-outside");
    let secret = outside.write("secret.png", b"secret");
    dir.write("keep.png", b"keep");
    dir.write(".hidden.png", b"hidden");
    dir.write(".partial.tmp", b"tmp");
    std::fs::create_dir(dir.path().join("subdir")).unwrap();
    std::fs::write(dir.path().join("subdir").join("deep.png"), b"deep").unwrap();
    std::os::unix::fs::symlink(&secret, dir.path().join("escape.png")).unwrap();
    std::os::unix::fs::symlink("keep.png", dir.path().join("alias.png")).unwrap();
    std::os::unix::fs::symlink("missing.png", dir.path().join("broken.png")).unwrap();
    std::os::unix::fs::symlink(".ferry/index", dir.path().join("index.bin")).unwrap();
    std::os::unix::fs::symlink("subdir", dir.path().join("dirlink")).unwrap();
    let bad = OsString::from_vec(b"bad\xff.png".to_vec());
    std::fs::write(dir.path().join(&bad), b"bad").unwrap();
    let fifo = std::ffi::CString::new(dir.path().join("fifo").as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);

    let h = open(&dir);
    let snap = h.snapshot();
    assert_eq!(names(&snap), ["alias.png", "keep.png"]);
    assert_eq!(snap.by_name("alias.png").unwrap().xxh64, xxh(b"keep"));
    // .hidden.png .partial.tmp subdir escape.png broken.png index.bin dirlink bad fifo
    assert_eq!(h.last_report().skipped, 9);
    // The symlinked entry serves its target.
    let m = snap.by_name("alias.png").unwrap().open().unwrap();
    assert_eq!(m.len(), 4);
}

#[test]
fn warm_reopen_hashes_nothing() {
    let dir = TempDir::new("warm");
    for i in 0..20 {
        dir.write(&format!("f{i:02}.png"), format!("content {i}").as_bytes());
    }
    let first = open(&dir);
    assert_eq!(first.last_report().hashed, 20);
    let ids: Vec<u64> = first.snapshot().entries().iter().map(|e| e.xxh64).collect();
    drop(first);
    let warm = open(&dir);
    let r = warm.last_report();
    assert_eq!((r.files, r.hashed, r.reused), (20, 0, 20));
    let again: Vec<u64> = warm.snapshot().entries().iter().map(|e| e.xxh64).collect();
    assert_eq!(ids, again);
}

#[test]
fn corrupt_or_foreign_index_is_ignored_and_rewritten() {
    let dir = TempDir::new("corrupt");
    dir.write("a.png", b"a");
    dir.write("b.png", b"b");
    drop(open(&dir));
    let index = dir.path().join(".ferry").join("index");
    for garbage in [&b"not an index at all"[..], b"", b"FERRYIDX\x63\0\0\0"] {
        std::fs::write(&index, garbage).unwrap();
        let h = open(&dir);
        assert_eq!(h.last_report().hashed, 2);
        assert_eq!(h.snapshot().len(), 2);
        drop(h);
        assert_eq!(open(&dir).last_report().hashed, 0);
    }
    // Flip one byte of a valid index: the checksum catches it.
    let mut bytes = std::fs::read(&index).unwrap();
    bytes[30] ^= 0x40;
    std::fs::write(&index, bytes).unwrap();
    assert_eq!(open(&dir).last_report().hashed, 2);
}

#[test]
fn stale_index_record_is_not_trusted() {
    let dir = TempDir::new("stale");
    dir.write("a.png", b"old");
    drop(open(&dir));
    dir.write("a.png", b"newer bytes");
    let h = open(&dir);
    assert_eq!(h.last_report().hashed, 1);
    assert_eq!(h.snapshot().entries()[0].xxh64, xxh(b"newer bytes"));
}

#[test]
fn modified_file_gets_new_ids_and_old_id_is_retired() {
    let dir = TempDir::new("modify");
    dir.write("a.png", b"version one");
    dir.write("b.png", b"unchanged");
    let h = open(&dir);
    let before = h.snapshot();
    let old = before.by_name("a.png").unwrap().clone();
    let_clock_tick();
    dir.write("a.png", b"version two"); // same size
    let r = h.rescan().unwrap();
    assert!(r.changed);
    assert_eq!((r.hashed, r.reused), (1, 1));
    let after = h.snapshot();
    assert!(after.generation() > before.generation());
    let new = after.by_name("a.png").unwrap();
    assert_eq!(new.xxh64, xxh(b"version two"));
    assert_ne!(new.sha256, old.sha256);
    assert!(after.by_xxh64(old.xxh64).is_none());
    assert!(after.by_sha256(&old.sha256).is_none());
    // The unchanged entry is the same Arc (its mapping cache survives).
    assert!(Arc::ptr_eq(
        before.by_name("b.png").unwrap(),
        after.by_name("b.png").unwrap()
    ));
    // The old snapshot is untouched, but its entry refuses to serve the new bytes.
    assert_eq!(before.by_name("a.png").unwrap().xxh64, old.xxh64);
    assert_eq!(
        old.open().unwrap_err().kind(),
        io::ErrorKind::Other,
        "old entry must not open"
    );
}

#[test]
fn deleted_file_disappears() {
    let dir = TempDir::new("delete");
    dir.write("a.png", b"a");
    let p = dir.write("b.png", b"b");
    let h = open(&dir);
    std::fs::remove_file(p).unwrap();
    let r = h.rescan().unwrap();
    assert!(r.changed);
    assert_eq!(r.files, 1);
    let snap = h.snapshot();
    assert_eq!(names(&snap), ["a.png"]);
    assert!(snap.by_xxh64(xxh(b"b")).is_none());
    drop(h);
    // The index forgot it too.
    assert_eq!(open(&dir).last_report().files, 1);
}

#[test]
fn unchanged_rescan_keeps_the_snapshot() {
    let dir = TempDir::new("same");
    dir.write("a.png", b"a");
    let h = open(&dir);
    let before = h.snapshot();
    let r = h.rescan().unwrap();
    assert!(!r.changed);
    assert_eq!((r.hashed, r.reused, r.files), (0, 1, 1));
    assert!(Arc::ptr_eq(&before, &h.snapshot()));
    assert_eq!(h.last_report(), r);
}

#[test]
fn entry_open_caches_and_detects_changes() {
    let dir = TempDir::new("entryopen");
    dir.write("a.png", b"first");
    dir.write("b.png", b"bee");
    let h = open(&dir);
    let snap = h.snapshot();
    let a = snap.by_name("a.png").unwrap();
    let m1 = a.open().unwrap();
    let m2 = a.open().unwrap();
    assert!(Arc::ptr_eq(&m1, &m2));
    assert_eq!(m1.stamp(), a.stamp);

    // Replaced by rename: the cached mapping keeps the old inode and keeps serving.
    dir.write(".incoming", b"replacement");
    std::fs::rename(dir.path().join(".incoming"), &a.path).unwrap();
    let m3 = a.open().unwrap();
    assert!(Arc::ptr_eq(&m1, &m3));
    let mut buf = [0u8; 16];
    let n = m3.read_at(0, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"first");

    // Rewritten in place before first open: refused.
    let b = snap.by_name("b.png").unwrap();
    let_clock_tick();
    dir.write("b.png", b"BEE");
    assert_eq!(b.open().unwrap_err().to_string(), "changed");
}

#[test]
fn truncation_under_an_open_mapping_does_not_crash() {
    let dir = TempDir::new("trunc");
    let p = dir.write("big.bin", &vec![7u8; 64 * 1024]);
    let h = open(&dir);
    let e = h.snapshot().entries()[0].clone();
    let m = e.open().unwrap();
    std::fs::File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(0)
        .unwrap();
    let (mut r, w) = {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        use std::os::fd::FromRawFd;
        // SAFETY: both descriptors are fresh and owned only here.
        unsafe {
            (
                std::fs::File::from_raw_fd(fds[0]),
                std::fs::File::from_raw_fd(fds[1]),
            )
        }
    };
    use std::os::fd::AsRawFd;
    let err = m.send_to(w.as_raw_fd(), 0, 4096).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EFAULT));
    assert!(!m.is_unchanged());
    assert!(e.open().is_err());
    drop(w);
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut r, &mut got).unwrap();
    assert!(got.is_empty());
}

#[test]
fn wait_for_change_wakes_on_swap_and_times_out_otherwise() {
    let dir = TempDir::new("wait");
    let h = open(&dir);
    let g = h.snapshot().generation();
    let same = h.wait_for_change(g, Duration::from_millis(20));
    assert_eq!(same.generation(), g);
    // An old generation returns at once.
    assert_eq!(
        h.wait_for_change(g - 1, Duration::from_secs(60))
            .generation(),
        g
    );

    let h2 = Arc::clone(&h);
    let root = dir.path().to_owned();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(root.join("new.png"), b"new").unwrap();
        h2.rescan().unwrap();
    });
    let snap = h.wait_for_change(g, Duration::MAX);
    t.join().unwrap();
    assert!(snap.generation() > g);
    assert_eq!(names(&snap), ["new.png"]);
}

#[test]
fn add_file_updates_one_file_and_the_index() {
    let dir = TempDir::new("add");
    dir.write("a.png", b"a");
    let h = open(&dir);
    let g = h.snapshot().generation();
    let p = dir.write("b.png", b"bbb");
    let e = h.add_file(&p).unwrap();
    assert_eq!(e.name, "b.png");
    assert_eq!(e.xxh64, xxh(b"bbb"));
    let snap = h.snapshot();
    assert_eq!(snap.generation(), g + 1);
    assert_eq!(names(&snap), ["a.png", "b.png"]);
    assert!(Arc::ptr_eq(snap.by_name("b.png").unwrap(), &e));
    // Adding it again without change is a no-op.
    let again = h.add_file(&p).unwrap();
    assert!(Arc::ptr_eq(&again, &e));
    assert_eq!(h.snapshot().generation(), g + 1);
    // Replacing it retires the old id.
    let_clock_tick();
    dir.write("b.png", b"other");
    let e2 = h.add_file(&p).unwrap();
    let snap = h.snapshot();
    assert_eq!(snap.len(), 2);
    assert!(snap.by_xxh64(e.xxh64).is_none());
    assert_eq!(snap.by_name("b.png").unwrap().xxh64, e2.xxh64);
    // A rescan and a warm start trust what add_file hashed.
    assert_eq!(h.rescan().unwrap().hashed, 0);
    drop(h);
    assert_eq!(open(&dir).last_report().hashed, 0);
}

#[test]
fn add_file_refuses_outside_and_excluded_paths() {
    let dir = TempDir::new("addbad");
    let other = TempDir::new("addbad-other");
    let h = open(&dir);
    let outside = other.write("x.png", b"x");
    assert!(matches!(
        h.add_file(&outside),
        Err(CatalogError::NotInRoot { .. })
    ));
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let nested = dir.path().join("sub").join("y.png");
    std::fs::write(&nested, b"y").unwrap();
    assert!(matches!(
        h.add_file(&nested),
        Err(CatalogError::NotInRoot { .. })
    ));
    let hidden = dir.write(".z.png", b"z");
    assert!(matches!(
        h.add_file(&hidden),
        Err(CatalogError::Excluded {
            reason: SkipReason::Hidden,
            ..
        })
    ));
    let missing = dir.path().join("missing.png");
    assert!(matches!(
        h.add_file(&missing),
        Err(CatalogError::Excluded {
            reason: SkipReason::Unstatable(io::ErrorKind::NotFound),
            ..
        })
    ));
    assert!(h.snapshot().is_empty());
}

#[test]
fn watcher_rescans_and_stops_on_drop() {
    let dir = TempDir::new("watch");
    let h = open(&dir);
    let g = h.snapshot().generation();
    let guard = h.spawn_watcher(Duration::from_millis(10));
    assert!(guard.is_running());
    dir.write("w.png", b"w");
    let snap = h.wait_for_change(g, Duration::from_secs(30));
    assert_eq!(names(&snap), ["w.png"]);
    drop(guard);
    // No thread keeps the handle alive.
    assert_eq!(Arc::strong_count(&h), 1);
}

#[test]
fn concurrent_rescans_are_serialised() {
    let dir = TempDir::new("concurrent");
    for i in 0..10 {
        dir.write(&format!("{i}.bin"), &vec![i as u8; 10_000]);
    }
    let h = open(&dir);
    std::thread::scope(|s| {
        for t in 0..4 {
            let h = &h;
            let dir = &dir;
            s.spawn(move || {
                for i in 0..5 {
                    dir.write(&format!("t{t}-{i}.bin"), format!("{t}{i}").as_bytes());
                    h.rescan().unwrap();
                }
            });
        }
    });
    let r = h.rescan().unwrap();
    assert_eq!(r.files, 30);
    assert_eq!(r.hashed, 0);
    assert_eq!(h.snapshot().len(), 30);
}

#[test]
fn error_display() {
    let io = CatalogError::Io {
        path: "/x".into(),
        source: io::Error::from(io::ErrorKind::NotFound),
    };
    assert!(io.to_string().starts_with("catalog: /x: "));
    assert!(std::error::Error::source(&io).is_some());
    assert_eq!(
        CatalogError::NotInRoot { path: "/y".into() }.to_string(),
        "catalog: /y is not directly in the root"
    );
    assert_eq!(
        CatalogError::Excluded {
            path: "/r/.a".into(),
            reason: SkipReason::Hidden
        }
        .to_string(),
        "catalog: /r/.a is excluded: hidden name"
    );
    assert_eq!(
        CatalogError::Changed { path: "/z".into() }.to_string(),
        "catalog: /z changed while hashing"
    );
}

#[test]
fn ten_thousand_record_index_round_trips() {
    let mut idx = Index::new();
    for i in 0..10_000u64 {
        idx.insert(
            OsString::from(format!("image-{i:05}.png")),
            IndexRecord {
                stamp: FileStamp {
                    dev: 1,
                    ino: i,
                    size: i * 3,
                    mtime_ns: i as i128,
                    ctime_ns: i as i128,
                },
                xxh64: i,
                sha256: [i as u8; 32],
            },
        );
    }
    let dir = TempDir::new("bigindex");
    index::save(dir.path(), &idx).unwrap();
    let t = Instant::now();
    let loaded = index::load(dir.path()).unwrap();
    // Measured, not asserted (tests never fail on timing).
    eprintln!("loaded 10,000 index records in {:?}", t.elapsed());
    assert_eq!(loaded, idx);
}
