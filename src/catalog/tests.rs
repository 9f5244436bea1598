//! Behaviour tests of the catalog against real temporary folders.

use super::*;
use sha2::Digest;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
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
    c.entries().map(|e| e.name.as_str()).collect()
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
    // Debug shows the hashes in hex, as the logs and the CLI do, and a catalog by its size.
    let shown = format!("{empty:?}");
    assert!(
        shown.starts_with("Entry { name: \"empty.png\", path: "),
        "{shown}"
    );
    assert!(
        shown.contains("size: 0,")
            && shown.contains("xxh64: \"ef46db3751d8e999\"")
            && shown.contains(&format!("sha256: \"{}\"", empty.sha256_hex())),
        "{shown}"
    );
    assert_eq!(
        format!("{snap:?}"),
        format!("Catalog {{ generation: {}, len: 2 }}", snap.generation())
    );
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
    assert_eq!(
        snap.entries().next().unwrap().xxh64,
        snap.entries().nth(1).unwrap().xxh64
    );
    assert_eq!(snap.by_xxh64(xxh(b"same bytes")).unwrap().name, "a.png");
    assert_eq!(
        snap.by_sha256(&snap.entries().nth(1).unwrap().sha256)
            .unwrap()
            .name,
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
    let ids: Vec<u64> = snap.entries().map(|e| e.xxh64).collect();
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
    let ids: Vec<u64> = first.snapshot().entries().map(|e| e.xxh64).collect();
    drop(first);
    let warm = open(&dir);
    let r = warm.last_report();
    assert_eq!((r.files, r.hashed, r.reused), (20, 0, 20));
    let again: Vec<u64> = warm.snapshot().entries().map(|e| e.xxh64).collect();
    assert_eq!(ids, again);
}

/// Files added while no server ran are hashed by the next start, which compacts them into
/// the index (the journal holds nothing then): the start after that hashes nothing.
#[test]
fn changes_found_at_a_warm_start_are_saved_in_the_index() {
    let dir = TempDir::new("warm-change");
    dir.write("a.png", b"a");
    drop(open(&dir));
    dir.write("b.png", b"b");
    dir.write("c.png", b"c");
    let h = open(&dir);
    assert_eq!(h.last_report().hashed, 2);
    drop(h);
    let r = open(&dir).last_report();
    assert_eq!((r.files, r.hashed, r.reused), (3, 0, 3));
}

/// A failed index write is retried at the next change, however small. A clean start's
/// records go only to the index, not the journal, so until the index is written they are
/// saved nowhere and the next start hashes everything again (mutation sample F: `needs_save
/// ||` as `&&` left the retry to the compaction threshold).
#[test]
fn a_failed_index_write_is_retried_at_the_next_change() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("save-retry");
    dir.write("a.png", b"a");
    dir.write("b.png", b"b");
    // The index's place is taken by a folder that is not empty: the rename onto it fails.
    let state = dir.path().join(".ferry");
    let index = state.join("index");
    std::fs::create_dir_all(index.join("blocker")).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let h = open(&dir);
    assert_eq!(h.last_report().hashed, 2);
    assert!(index.is_dir(), "the index was written after all");
    std::fs::remove_dir_all(&index).unwrap();
    dir.write("c.png", b"c");
    h.rescan().unwrap();
    drop(h);
    let r = open(&dir).last_report();
    assert_eq!((r.files, r.hashed, r.reused), (3, 0, 3));
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
    assert_eq!(
        h.snapshot().entries().next().unwrap().xxh64,
        xxh(b"newer bytes")
    );
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
fn entry_open_serves_its_version_or_refuses() {
    let dir = TempDir::new("entryopen");
    dir.write("a.png", b"first");
    dir.write("b.png", b"bee");
    let h = open(&dir);
    let snap = h.snapshot();
    let a = snap.by_name("a.png").unwrap();
    let m1 = a.open().unwrap();
    assert_eq!(m1.stamp(), a.stamp);
    // Each open is its own (no descriptor is kept per entry).
    let m2 = a.open().unwrap();
    assert!(!Arc::ptr_eq(&m1, &m2));
    assert_eq!(m2.stamp(), a.stamp);

    // Replaced by rename: a mapping already held keeps the old inode and its bytes; a new open
    // finds another version and refuses it (the live catalog publishes it under a new Entry).
    dir.write(".incoming", b"replacement");
    std::fs::rename(dir.path().join(".incoming"), &a.path).unwrap();
    let mut buf = [0u8; 16];
    let n = m1.read_at(0, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"first");
    assert_eq!(a.open().unwrap_err().to_string(), "changed");
    assert!(h.shared.drift.take().contains(OsStr::new("a.png")));

    // Rewritten in place: refused.
    let b = snap.by_name("b.png").unwrap();
    let_clock_tick();
    dir.write("b.png", b"BEE");
    assert_eq!(b.open().unwrap_err().to_string(), "changed");
}

#[test]
fn entry_open_never_follows_a_swapped_link_out_of_the_root_or_into_state() {
    let dir = TempDir::new("entryswap");
    let outside = TempDir::new("entryswap-out");
    let secret = outside.write("secret.png", b"secret");
    dir.write("inside.png", b"public");
    std::os::unix::fs::symlink("inside.png", dir.path().join("x.png")).unwrap();
    let h = open(&dir);
    let x = h.snapshot().by_file_name("x.png").unwrap().clone();
    assert_eq!(x.sha256, <[u8; 32]>::from(sha2::Sha256::digest(b"public")));
    assert!(x.open().is_ok());
    let key = dir.path().join(".ferry/key.pem");
    std::fs::write(&key, b"private key").unwrap();
    for target in [secret.as_path(), key.as_path(), Path::new(".ferry/key.pem")] {
        std::fs::remove_file(dir.path().join("x.png")).unwrap();
        std::os::unix::fs::symlink(target, dir.path().join("x.png")).unwrap();
        let e = x.open().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{target:?}: {e}");
        let r = h.rescan().unwrap();
        assert!(h.snapshot().by_file_name("x.png").is_none(), "{target:?}");
        assert_eq!(r.files, 1, "{target:?}");
    }
    // A FIFO swapped in: refused at once (a blocking open would never return).
    std::fs::remove_file(dir.path().join("x.png")).unwrap();
    let fifo = std::ffi::CString::new(dir.path().join("x.png").as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let e = x.open().unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
}

#[test]
fn a_state_folder_that_is_a_link_or_writable_by_others_is_refused() {
    let dir = TempDir::new("state-link");
    let elsewhere = TempDir::new("state-link-target");
    std::os::unix::fs::symlink(elsewhere.path(), dir.path().join(".ferry")).unwrap();
    let e = CatalogHandle::open(dir.path(), CatalogOptions::default()).unwrap_err();
    assert!(e.to_string().contains("is a symbolic link"), "{e}");
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);

    let dir = TempDir::new("state-gw");
    std::fs::create_dir(dir.path().join(".ferry")).unwrap();
    std::fs::set_permissions(
        dir.path().join(".ferry"),
        std::fs::Permissions::from_mode(0o770),
    )
    .unwrap();
    let e = CatalogHandle::open(dir.path(), CatalogOptions::default()).unwrap_err();
    assert!(e.to_string().contains("chmod go-w"), "{e}");
    assert_eq!(
        std::fs::read_dir(dir.path().join(".ferry"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn truncation_under_an_open_mapping_does_not_crash() {
    let dir = TempDir::new("trunc");
    let p = dir.write("big.bin", &vec![7u8; 64 * 1024]);
    let h = open(&dir);
    let e = h.snapshot().entries().next().unwrap().clone();
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

    // No deadline (Duration::MAX): woken by the rescan's new generation. The wait runs on a
    // thread of its own so that a wait never woken fails this test in seconds, not hangs it.
    let h2 = Arc::clone(&h);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(h2.wait_for_change(g, Duration::MAX));
    });
    std::thread::sleep(Duration::from_millis(20));
    dir.write("new.png", b"new");
    h.rescan().unwrap();
    let snap = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the new generation wakes the wait");
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
fn add_published_file_registers_hashes_only_for_the_published_inode() {
    use std::os::unix::fs::MetadataExt;
    let dir = TempDir::new("addpub");
    let h = open(&dir);
    let p = dir.write("up.bin", b"uploaded");
    let m = std::fs::metadata(&p).unwrap();
    let (xxh64, sha256) = (
        xxh(b"uploaded"),
        <[u8; 32]>::from(sha2::Sha256::digest(b"uploaded")),
    );
    // Someone renamed another file over the name after it was published.
    dir.write(".other", b"planted!");
    std::fs::rename(dir.path().join(".other"), &p).unwrap();
    assert!(matches!(
        h.add_published_file(&p, (m.dev(), m.ino()), xxh64, sha256),
        Err(CatalogError::Changed { .. })
    ));
    assert!(h.snapshot().by_file_name("up.bin").is_none());
    let now = std::fs::metadata(&p).unwrap();
    let planted = sha2::Sha256::digest(b"planted!").into();
    let e = h
        .add_published_file(&p, (now.dev(), now.ino()), xxh(b"planted!"), planted)
        .unwrap();
    assert_eq!(e.sha256, planted);
}

/// `add_unchanged_file` registers known hashes only for the very file they were taken of: the
/// same inode, size and modification time (a new link, which changes only the change time,
/// is fine). A file written in place since keeps its inode but gets no hashes; the next scan
/// hashes it. (Review finding: `ferry sync` recorded a local copy's hashes for a file
/// rewritten during the run, and every later run trusted them.)
#[test]
fn add_unchanged_file_registers_hashes_only_for_the_unchanged_file() {
    use crate::catalog::FileStamp;
    let dir = TempDir::new("addsame");
    let h = open(&dir);
    let p = dir.write("kept.bin", b"original");
    let was = FileStamp::from_metadata(&std::fs::symlink_metadata(&p).unwrap());
    let sha: [u8; 32] = sha2::Sha256::digest(b"original").into();
    // A hard link changes the change time only.
    std::fs::hard_link(&p, dir.path().join(".held")).unwrap();
    let e = h
        .add_unchanged_file(&p, &was, xxh(b"original"), sha)
        .unwrap();
    assert_eq!(e.sha256, sha);
    // Written in place, same size, same inode: refused.
    let_clock_tick();
    std::fs::write(&p, b"ORIGINAL").unwrap();
    assert!(matches!(
        h.add_unchanged_file(&p, &was, xxh(b"original"), sha),
        Err(CatalogError::Changed { .. })
    ));
    let r = h.rescan().unwrap();
    assert_eq!(r.hashed, 1);
    let now = h.snapshot().by_file_name("kept.bin").unwrap().sha256;
    assert_eq!(now, <[u8; 32]>::from(sha2::Sha256::digest(b"ORIGINAL")));
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

/// A polling follower rescans once per interval, the first time one interval after it
/// starts: not at once, and not back to back (mutation run: `now + poll` as `-` for the
/// first or the next poll rescanned at once, or in a loop).
#[test]
fn polls_come_one_interval_apart() {
    let dir = TempDir::new("poll-interval");
    let h = open(&dir);
    assert_eq!(h.full_scans(), 1);
    let guard = h.spawn_watcher(Duration::from_millis(400));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(h.full_scans(), 1, "no rescan before the first interval");
    std::thread::sleep(Duration::from_millis(1000));
    let scans = h.full_scans();
    drop(guard);
    // Two or three intervals passed (1.2 s of 400 ms; a loaded machine may lag one).
    assert!((2..=4).contains(&scans), "{scans} scans");
}

#[test]
fn watcher_rescans_and_stops_on_drop() {
    let dir = TempDir::new("watch");
    let h = open(&dir);
    let g = h.snapshot().generation();
    let guard = h.spawn_watcher(Duration::from_millis(10));
    assert!(guard.is_running());
    assert!(!guard.is_live(), "polling only, no inotify");
    dir.write("w.png", b"w");
    let snap = h.wait_for_change(g, Duration::from_secs(10));
    assert_eq!(names(&snap), ["w.png"]);
    drop(guard);
    // No thread keeps the handle alive.
    assert_eq!(Arc::strong_count(&h), 1);
    // The thread is stopped, not left running: a file added now stays out (a 10 ms poller
    // would have published it many times over).
    dir.write("late.png", b"late");
    let_follower_settle();
    assert_eq!(names(&h.snapshot()), ["w.png"]);
    // And a watcher whose catalog is gone ends by itself, which its guard reports.
    let guard = h.spawn_watcher(Duration::from_millis(10));
    assert!(guard.is_running());
    drop(h);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while guard.is_running() {
        assert!(
            std::time::Instant::now() < deadline,
            "the watcher outlived its catalog"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
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
    let state = Dir::open(dir.path()).unwrap();
    index::save(&state, &idx).unwrap();
    let t = Instant::now();
    let loaded = index::load(&state).unwrap();
    // Measured, not asserted (tests never fail on timing).
    eprintln!("loaded 10,000 index records in {:?}", t.elapsed());
    assert_eq!(loaded, idx);
}

// ---------------------------------------------------------------------------------------------
// Lookups by on-disk name, paging, positions

#[test]
fn by_file_name_and_files_after_page_in_byte_order_of_disk_names() {
    let dir = TempDir::new("files-after");
    let nfd = "cafe\u{301}.png";
    for n in ["b.png", "a.png", nfd, "caf\u{e9}.png", "Z.txt"] {
        dir.write(n, n.as_bytes());
    }
    let h = open(&dir);
    let snap = h.snapshot();
    assert_eq!(snap.by_file_name(nfd).unwrap().file_name(), nfd);
    assert_eq!(snap.by_file_name(nfd).unwrap().name, "caf\u{e9}.png");
    assert_eq!(
        snap.by_file_name("caf\u{e9}.png").unwrap().file_name(),
        "caf\u{e9}.png"
    );
    assert!(snap.by_file_name("c.png").is_none());
    let all: Vec<&str> = snap.files_after("").map(|e| e.file_name()).collect();
    let mut want = vec!["b.png", "a.png", nfd, "caf\u{e9}.png", "Z.txt"];
    want.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    assert_eq!(all, want);
    let rest: Vec<&str> = snap.files_after("a.png").map(|e| e.file_name()).collect();
    assert_eq!(rest, want[2..]);
    assert_eq!(
        snap.files_after("a.pn").next().unwrap().file_name(),
        "a.png"
    );
    assert_eq!(snap.files_after("zzz").count(), 0);
    // Positions: skip jumps, and catalog order is kept.
    let names: Vec<String> = snap.entries().map(|e| e.name.clone()).collect();
    let skipped: Vec<String> = snap.entries().skip(3).map(|e| e.name.clone()).collect();
    assert_eq!(skipped, names[3..]);
    assert_eq!(snap.entries().len(), 5);
}

/// An Entry for a file that need not exist (structure tests only).
fn fake_entry(h: &CatalogHandle, i: u64) -> Arc<Entry> {
    let name = format!("f{i:07}.bin");
    let c = Candidate {
        disk_name: OsString::from(&name),
        name: name.clone(),
        path: h.root().join(&name),
        stamp: FileStamp {
            dev: 1,
            ino: i,
            size: 1,
            mtime_ns: 0,
            ctime_ns: 0,
        },
    };
    let stamp = c.stamp;
    let mut sha = [0u8; 32];
    sha[..8].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
    Arc::new(h.entry(c, stamp, i.wrapping_mul(0xff51_afd7_ed55_8ccd), sha))
}

fn fresh_nodes(new: &Catalog, old: &Catalog) -> [usize; 4] {
    [
        new.order.fresh_nodes_since(&old.order),
        new.files.fresh_nodes_since(&old.files),
        new.by_xxh64.fresh_nodes_since(&old.by_xxh64),
        new.by_sha256.fresh_nodes_since(&old.by_sha256),
    ]
}

#[test]
fn one_more_entry_in_a_100k_catalog_copies_one_path_per_order() {
    let dir = TempDir::new("100k");
    let h = open(&dir);
    let entries: Vec<Arc<Entry>> = (0..100_000).map(|i| fake_entry(&h, i * 2)).collect();
    let base = Catalog::from_entries(1, entries);
    let mut next = base.next_generation();
    let extra = fake_entry(&h, 777);
    next.insert(&extra);
    for (i, n) in fresh_nodes(&next, &base).into_iter().enumerate() {
        // A path of a tree of 100,001 (height 17 as built, at most ~40 after edits) plus a
        // rotation; a rebuild would allocate 100,001.
        assert!(n <= 64, "order {i}: {n} new nodes for one insert");
    }
    assert_eq!(next.len(), 100_001);
    assert_eq!(base.len(), 100_000, "the older snapshot never changes");
    assert!(Arc::ptr_eq(next.by_xxh64(extra.xxh64).unwrap(), &extra));
    assert!(Arc::ptr_eq(next.by_sha256(&extra.sha256).unwrap(), &extra));
    assert!(Arc::ptr_eq(next.by_name("f0000777.bin").unwrap(), &extra));
    assert!(base.by_name("f0000777.bin").is_none());
    // 0, 2, ..., 776 are positions 0..=388: the new entry is 389, and 778 moves to 390.
    assert!(Arc::ptr_eq(next.entries().nth(389).unwrap(), &extra));
    assert_eq!(next.entries().nth(390).unwrap().name, "f0000778.bin");
    assert_eq!(base.entries().nth(389).unwrap().name, "f0000778.bin");
}

#[test]
fn add_file_publishes_incrementally_and_appends_one_journal_record() {
    let dir = TempDir::new("incremental");
    for i in 0..2000u32 {
        dir.write(&format!("f{i:04}.bin"), &i.to_le_bytes());
    }
    let h = open(&dir);
    let index = dir.path().join(".ferry/index");
    let journal = dir.path().join(".ferry/journal");
    let index_before = std::fs::metadata(&index).unwrap();
    let journal_before = std::fs::metadata(&journal).unwrap().len();
    let before = h.snapshot();
    let p = dir.write("new.bin", b"new bytes");
    h.add_ingested_file(&p, xxh(b"new bytes"), [7; 32]).unwrap();
    let after = h.snapshot();
    assert_eq!(after.generation(), before.generation() + 1);
    assert_eq!(after.len(), 2001);
    for (i, n) in fresh_nodes(&after, &before).into_iter().enumerate() {
        assert!(n <= 48, "order {i}: {n} new nodes (a rebuild makes 2001)");
    }
    // The index file is untouched; the journal grew by one put record of this name.
    let index_after = std::fs::metadata(&index).unwrap();
    assert_eq!(
        (
            index_after.ino(),
            index_after.len(),
            index_after.mtime_nsec()
        ),
        (
            index_before.ino(),
            index_before.len(),
            index_before.mtime_nsec()
        )
    );
    let grown = std::fs::metadata(&journal).unwrap().len() - journal_before;
    assert_eq!(
        grown,
        4 + 1 + 2 + 7 + 96 + 8,
        "one record: frame, op, name, fields, sum"
    );
    drop(h);
    // A warm start replays it: nothing hashed, and the clean start compacts.
    let h = open(&dir);
    assert_eq!(h.last_report().hashed, 0);
    assert_eq!(
        h.snapshot().by_file_name("new.bin").unwrap().sha256,
        [7; 32]
    );
    assert_eq!(std::fs::metadata(&journal).unwrap().len(), 12);
}

#[test]
fn torn_journal_record_is_ignored_and_its_file_rehashed() {
    let dir = TempDir::new("torn");
    dir.write("base.bin", b"base");
    let h = open(&dir);
    for n in ["a.bin", "b.bin", "c.bin"] {
        let p = dir.write(n, n.as_bytes());
        h.add_file(&p).unwrap();
    }
    drop(h);
    let journal = dir.path().join(".ferry/journal");
    let bytes = std::fs::read(&journal).unwrap();
    // Cut the last record (c.bin) short, as a crash mid-write would.
    std::fs::write(&journal, &bytes[..bytes.len() - 5]).unwrap();
    let h = open(&dir);
    let r = h.last_report();
    assert_eq!((r.files, r.hashed, r.reused), (4, 1, 3));
    assert_eq!(std::fs::metadata(&journal).unwrap().len(), 12, "compacted");
    drop(h);
    // Garbage after good records: the good ones still count.
    let mut bytes = std::fs::read(&journal).unwrap();
    let h = open(&dir);
    let p = dir.write("d.bin", b"d");
    h.add_file(&p).unwrap();
    drop(h);
    bytes = [bytes, std::fs::read(&journal).unwrap()[12..].to_vec()].concat();
    bytes.extend_from_slice(&[0xff; 40]);
    std::fs::write(&journal, &bytes).unwrap();
    let h = open(&dir);
    assert_eq!(h.last_report().hashed, 0);
    assert_eq!(h.snapshot().len(), 5);
}

/// Long enough for the follower to have published anything it was going to (two looks a
/// settle time apart, and a hash).
fn let_follower_settle() {
    std::thread::sleep(live::SETTLE * 4);
}

// The live catalog (inotify, polling, a lost folder): tests/following.rs.
mod following;

#[test]
fn names_of_an_inode_follow_links_and_unlinks() {
    let dir = TempDir::new("inodes");
    let h = open(&dir);
    // Three entries of inode 5 (fake_entry uses the number as inode and in the name).
    let same = |i: u64| {
        let e = fake_entry(&h, i);
        let mut c = e.stamp;
        c.ino = 5;
        Arc::new(Entry {
            stamp: c,
            name: e.name.clone(),
            path: e.path.clone(),
            size: e.size,
            xxh64: e.xxh64,
            sha256: e.sha256,
            shared: Arc::clone(&h.shared),
        })
    };
    let (a, b, c) = (same(1), same(2), same(3));
    let mut st = lock(&h.state);
    let names = |st: &PublishState| {
        let mut v: Vec<String> = st
            .names_of((1, 5))
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    for e in [&a, &b, &c] {
        st.link(e);
    }
    assert_eq!(names(&st), ["f0000001.bin", "f0000002.bin", "f0000003.bin"]);
    st.unlink(&a);
    assert_eq!(names(&st), ["f0000002.bin", "f0000003.bin"]);
    st.unlink(&c);
    st.unlink(&c);
    assert_eq!(names(&st), ["f0000002.bin"]);
    st.unlink(&b);
    assert!(names(&st).is_empty());
    assert!(st.inodes.is_empty() && st.more_inodes.is_empty());
}

#[test]
fn hash_errors_display_what_happened() {
    assert_eq!(HashError::Changed.to_string(), "changed while hashing");
    let eio = || io::Error::from_raw_os_error(libc::EIO);
    assert_eq!(HashError::Io(eio()).to_string(), eio().to_string());
}

/// A sender pushing a file from a served folder takes its SHA-256 from the folder's index,
/// journal included, while the file's stamp still matches the record; a file changed since, a
/// name the index lacks, or a folder with no index gives `None` (mutation run: none of
/// `indexed_sha256`'s answers was checked from the catalog's side).
#[test]
fn indexed_sha256_is_the_record_while_the_file_is_unchanged() {
    let dir = TempDir::new("indexed-sha");
    let a = dir.write("a.bin", b"first");
    let h = open(&dir);
    // Added while serving: recorded in the journal, not the index.
    let b = dir.write("b.bin", b"second");
    h.add_ingested_file(&b, xxh(b"second"), [7; 32]).unwrap();
    drop(h);
    let sha = |bytes: &[u8]| <[u8; 32]>::from(sha2::Sha256::digest(bytes));
    assert_eq!(crate::catalog::indexed_sha256(&a), Some(sha(b"first")));
    assert_eq!(crate::catalog::indexed_sha256(&b), Some([7; 32]));
    assert_eq!(
        crate::catalog::indexed_sha256(&dir.path().join("c.bin")),
        None
    );
    let_clock_tick();
    std::fs::write(&a, b"firsT").unwrap();
    assert_eq!(crate::catalog::indexed_sha256(&a), None);
    let bare = TempDir::new("indexed-sha-none");
    assert_eq!(
        crate::catalog::indexed_sha256(&bare.write("a.bin", b"first")),
        None
    );
}

/// `is_current` (what a JTP response counts before it opens anything) says whether the file
/// under an entry's name is still the version hashed: true for an unchanged file or a link to
/// an unchanged target, false once either changed or the name is gone or is a folder now
/// (mutation run: none of its answers was checked by a catalog test).
#[test]
fn is_current_says_whether_the_name_still_holds_the_hashed_version() {
    let dir = TempDir::new("is-current");
    dir.write("f.png", b"file");
    dir.write("t.png", b"target");
    dir.write("d.png", b"becomes a folder");
    std::os::unix::fs::symlink("t.png", dir.path().join("l.png")).unwrap();
    let h = open(&dir);
    let snap = h.snapshot();
    let entry = |name: &str| Arc::clone(snap.by_file_name(name).unwrap());
    let (f, l, d) = (entry("f.png"), entry("l.png"), entry("d.png"));
    assert!(f.is_current() && l.is_current() && d.is_current());
    let_clock_tick();
    dir.write("f.png", b"file, rewritten");
    dir.write("t.png", b"target, rewritten");
    std::fs::remove_file(dir.path().join("d.png")).unwrap();
    std::fs::create_dir(dir.path().join("d.png")).unwrap();
    assert!(!f.is_current() && !l.is_current() && !d.is_current());
    std::fs::remove_dir(dir.path().join("d.png")).unwrap();
    assert!(!d.is_current());
}

/// Names whose opens failed are kept for the follower at most MAX_DRIFT at a time, each once
/// (mutation run: the bound's `||` as `&&` kept every name past it).
#[test]
fn drift_is_bounded_and_deduplicated() {
    let d = Drift::default();
    for i in 0..MAX_DRIFT + 10 {
        d.report(OsStr::new(&format!("n{i}")));
    }
    d.report(OsStr::new("n0"));
    let names = d.take();
    assert_eq!(names.len(), MAX_DRIFT);
    assert!(names.contains(OsStr::new("n0")) && !names.contains(OsStr::new("n5000")));
    assert!(d.take().is_empty());
}

/// A catalog opened through a path with a linked folder in it recognises absolute link targets
/// written through that path as inside the folder (mutation run: the path as given was never
/// added beside the canonical one when `!` was deleted); its Debug names it.
#[test]
fn absolute_link_targets_through_the_given_path_are_inside() {
    let real = TempDir::new("via-link");
    let via = real.path().with_extension("via");
    std::os::unix::fs::symlink(real.path(), &via).unwrap();
    real.write("t.png", b"target");
    std::os::unix::fs::symlink(via.join("t.png"), real.path().join("a.png")).unwrap();
    let h = CatalogHandle::open(&via, CatalogOptions::default()).unwrap();
    let snap = h.snapshot();
    assert_eq!(names(&snap), ["a.png", "t.png"]);
    assert_eq!(snap.by_file_name("a.png").unwrap().xxh64, xxh(b"target"));
    let shown = format!("{h:?}");
    assert!(
        shown.starts_with("CatalogHandle {") && shown.contains("generation"),
        "{shown}"
    );
    drop(h);
    std::fs::remove_file(&via).unwrap();
}

/// A file deleted while no ferry ran leaves the index at the next start: the index holds
/// exactly what the catalog lists (mutation run: the test for records to remove, `saved +
/// puts > listed`, as `<`, `==` or `*` left the deleted file's record in the index).
#[test]
fn a_file_deleted_while_stopped_leaves_the_index() {
    let dir = TempDir::new("index-removal");
    dir.write("a.png", b"a");
    dir.write("b.png", b"b");
    drop(open(&dir));
    std::fs::remove_file(dir.path().join("b.png")).unwrap();
    drop(open(&dir));
    let state = crate::dir::Dir::open(&dir.path().join(STATE_DIR)).unwrap();
    let mut idx = index::load(&state).unwrap();
    let (_, ops, _) = index::Journal::open(&state).unwrap();
    for op in ops {
        op.apply(&mut idx);
    }
    let mut names: Vec<_> = idx.keys().map(|k| k.to_str().unwrap().to_owned()).collect();
    names.sort();
    assert_eq!(names, ["a.png"]);
}

/// A change made against an entry that has been replaced since loses the race: it is handed
/// back, not applied over the newer entry (mutation run: the race test's `||` as `&&`
/// applied it when the name was not otherwise touched).
#[test]
fn a_change_against_a_replaced_entry_loses_the_race() {
    let dir = TempDir::new("publish-race");
    dir.write("a.png", b"first");
    let h = open(&dir);
    let old = Arc::clone(h.snapshot().by_file_name("a.png").unwrap());
    let_clock_tick();
    dir.write("a.png", b"second");
    h.rescan().unwrap();
    let stale = Change {
        name: OsString::from("a.png"),
        expected: Some(old),
        new: None,
    };
    let (applied, lost) = {
        let mut st = lock(&h.state);
        h.publish(&mut st, vec![stale], false)
    };
    assert_eq!((applied, lost.len()), (0, 1));
    assert_eq!(
        h.snapshot().by_file_name("a.png").unwrap().xxh64,
        xxh(b"second")
    );
}

/// The journal is folded into the index once it holds more records than the compaction bound
/// (4,096, or half the index): it never grows without end while a server runs (mutation run:
/// `journal + unsaved > bound` as `*`, as `==`, or joined to the unsaved test with `&&`
/// never compacted it).
#[test]
fn the_journal_is_compacted_past_its_bound() {
    let dir = TempDir::new("compact");
    let h = open(&dir);
    let n = COMPACT_MIN_RECORDS as usize + 100;
    for i in 0..n {
        let bytes = format!("file {i}");
        let p = dir.write(&format!("f{i:05}.bin"), bytes.as_bytes());
        h.add_ingested_file(&p, xxh(bytes.as_bytes()), [1; 32])
            .unwrap();
    }
    assert_eq!(h.snapshot().len(), n);
    let state = crate::dir::Dir::open(&dir.path().join(STATE_DIR)).unwrap();
    let (_, ops, _) = index::Journal::open(&state).unwrap();
    assert!(ops.len() < 200, "{} records left in the journal", ops.len());
    assert!(index::load(&state).unwrap().len() > COMPACT_MIN_RECORDS as usize);
}

/// A change big enough to rebuild the tree publishes the next generation, like a patch does
/// (mutation run: the rebuilt catalog's `generation + 1` as `-` or `*`).
#[test]
fn a_rebuild_publishes_the_next_generation() {
    let dir = TempDir::new("rebuild-generation");
    let h = open(&dir);
    let before = h.snapshot().generation();
    for i in 0..REBUILD_MIN_CHANGES + 10 {
        dir.write(&format!("g{i:05}.bin"), format!("{i}").as_bytes());
    }
    h.rescan().unwrap();
    let after = h.snapshot();
    assert_eq!(after.len(), REBUILD_MIN_CHANGES + 10);
    assert_eq!(after.generation(), before + 1);
}
