//! Tests of the descriptor-relative folder operations.

use super::*;
use std::io::Read;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::sync::atomic::{AtomicU32, Ordering};

struct Tmp(PathBuf);
impl Tmp {
    fn new(tag: &str) -> Tmp {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "ferry-dir-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(p.join("root")).unwrap();
        Tmp(p)
    }
    fn root(&self) -> PathBuf {
        self.0.join("root")
    }
}
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn read(b: Result<Beneath, BeneathError>) -> String {
    let mut s = String::new();
    b.unwrap().file.read_to_string(&mut s).unwrap();
    s
}

fn roots(t: &Tmp) -> Vec<PathBuf> {
    vec![std::fs::canonicalize(t.root()).unwrap(), t.root()]
}

#[test]
fn plain_names_and_links_inside_open() {
    let t = Tmp::new("inside");
    let r = t.root();
    std::fs::write(r.join("a"), "A").unwrap();
    std::fs::create_dir_all(r.join("sub/deep")).unwrap();
    std::fs::write(r.join("sub/deep/f"), "F").unwrap();
    symlink("a", r.join("l1")).unwrap();
    symlink("sub/deep/f", r.join("l2")).unwrap();
    symlink("sub/deep/../deep/f", r.join("l3")).unwrap();
    symlink("deep", r.join("sub/dl")).unwrap();
    symlink("sub/dl/f", r.join("l4")).unwrap();
    symlink(r.join("a"), r.join("abs")).unwrap();
    symlink("l1", r.join("chain")).unwrap();
    let d = Dir::open(&r).unwrap();
    let roots = roots(&t);
    let plain = d.open_beneath(OsStr::new("a"), &roots).unwrap();
    assert!(!plain.via_symlink);
    for (name, want) in [
        ("l1", "A"),
        ("l2", "F"),
        ("l3", "F"),
        ("l4", "F"),
        ("abs", "A"),
        ("chain", "A"),
    ] {
        let b = d.open_beneath(OsStr::new(name), &roots);
        assert!(b.as_ref().is_ok_and(|b| b.via_symlink), "{name}: {b:?}");
        assert_eq!(read(b), want, "{name}");
    }
}

#[test]
fn links_out_of_the_folder_or_into_hidden_names_are_refused() {
    let t = Tmp::new("outside");
    let r = t.root();
    std::fs::write(t.0.join("secret"), "S").unwrap();
    std::fs::create_dir_all(r.join(".ferry/tls")).unwrap();
    std::fs::write(r.join(".ferry/tls/key.pem"), "K").unwrap();
    std::fs::write(r.join(".hidden"), "H").unwrap();
    std::fs::create_dir_all(r.join("sub")).unwrap();
    symlink("../secret", r.join("rel-out")).unwrap();
    symlink("sub/../../secret", r.join("rel-out2")).unwrap();
    symlink(t.0.join("secret"), r.join("abs-out")).unwrap();
    symlink("/etc/passwd", r.join("etc")).unwrap();
    symlink(".ferry/tls/key.pem", r.join("key")).unwrap();
    symlink(r.join(".ferry/tls/key.pem"), r.join("abs-key")).unwrap();
    symlink(".hidden", r.join("hid")).unwrap();
    symlink("../.ferry/tls/key.pem", r.join("sub/key")).unwrap();
    symlink("sub/key", r.join("via-sub")).unwrap();
    symlink("/proc/self/root/etc/passwd", r.join("magic")).unwrap();
    let d = Dir::open(&r).unwrap();
    let roots = roots(&t);
    for name in ["rel-out", "rel-out2", "abs-out", "etc", "magic"] {
        let b = d.open_beneath(OsStr::new(name), &roots);
        assert!(matches!(b, Err(BeneathError::Outside)), "{name}: {b:?}");
    }
    for name in ["key", "abs-key", "hid", "via-sub", ".hidden"] {
        let b = d.open_beneath(OsStr::new(name), &roots);
        assert!(matches!(b, Err(BeneathError::Hidden)), "{name}: {b:?}");
    }
}

#[test]
fn broken_links_loops_and_missing_names() {
    let t = Tmp::new("broken");
    let r = t.root();
    std::fs::write(r.join("file"), "x").unwrap();
    symlink("nowhere", r.join("dangling")).unwrap();
    symlink("loop2", r.join("loop1")).unwrap();
    symlink("loop1", r.join("loop2")).unwrap();
    symlink("file/x", r.join("through-file")).unwrap();
    symlink(".", r.join("self")).unwrap();
    let deep = "d/".repeat(MAX_DEPTH + 1);
    std::fs::create_dir_all(r.join(&deep)).unwrap();
    std::fs::write(r.join(&deep).join("f"), "x").unwrap();
    symlink(format!("{deep}f"), r.join("too-deep")).unwrap();
    let ok = "d/".repeat(MAX_DEPTH);
    std::fs::write(r.join(&ok).join("g"), "x").unwrap();
    symlink(format!("{ok}g"), r.join("deep-enough")).unwrap();
    let d = Dir::open(&r).unwrap();
    let roots = roots(&t);
    assert!(d.open_beneath(OsStr::new("deep-enough"), &roots).is_ok());
    for name in ["dangling", "loop1", "through-file", "self", "too-deep"] {
        let b = d.open_beneath(OsStr::new(name), &roots);
        assert!(matches!(b, Err(BeneathError::Broken(_))), "{name}: {b:?}");
    }
    let b = d.open_beneath(OsStr::new("missing"), &roots);
    assert!(
        matches!(&b, Err(BeneathError::Io(e)) if e.kind() == io::ErrorKind::NotFound),
        "{b:?}"
    );
}

#[test]
fn a_fifo_opens_at_once_and_reads_as_not_regular() {
    let t = Tmp::new("fifo");
    let r = t.root();
    let c = CString::new(r.join("pipe").as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    symlink("pipe", r.join("to-pipe")).unwrap();
    let d = Dir::open(&r).unwrap();
    for name in ["pipe", "to-pipe"] {
        let b = d.open_beneath(OsStr::new(name), &roots(&t)).unwrap();
        assert!(!fstat(b.file.as_raw_fd()).unwrap().is_file());
    }
    let e = d.open_read(OsStr::new("pipe")).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
}

/// A file to send under another open's write lease (Samba oplocks, NFS delegations) is
/// waited for, as a plain open waits, not refused with "Resource temporarily unavailable"
/// (the non-blocking open that refuses FIFOs gets EWOULDBLOCK while the lease breaks).
#[test]
fn a_file_under_a_write_lease_is_opened_once_the_lease_is_given_up() {
    let t = Tmp::new("lease");
    let path = t.root().join("leased.bin");
    std::fs::write(&path, b"leased").unwrap();
    let holder = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let fd = holder.as_raw_fd();
    // SAFETY: fcntl on a descriptor the test owns. The break is announced with SIGWINCH,
    // which is ignored by default (SIGIO, the default, would end the test process).
    unsafe {
        // F_SETSIG (fcntl.h; not in the libc crate for this target).
        const F_SETSIG: libc::c_int = 10;
        assert_eq!(libc::fcntl(fd, F_SETSIG, libc::SIGWINCH), 0);
        let r = libc::fcntl(fd, libc::F_SETLEASE, libc::F_WRLCK);
        assert_eq!(
            r,
            0,
            "this test needs file leases (sysctl fs.leases-enable) on {}: {}",
            path.display(),
            io::Error::last_os_error()
        );
    }
    let p = path.clone();
    let opener = std::thread::spawn(move || open_file_to_send(&p));
    // The opener's open starts the break; the holder then gives the lease up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // SAFETY: as above.
    while unsafe { libc::fcntl(fd, libc::F_GETLEASE) } == libc::F_WRLCK
        && !opener.is_finished()
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // SAFETY: as above.
    unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
    let (mut f, meta) = opener.join().unwrap().unwrap();
    assert_eq!(meta.len(), 6);
    let mut got = String::new();
    f.read_to_string(&mut got).unwrap();
    assert_eq!(got, "leased");
    drop(holder);
}

#[test]
fn private_checks_name_the_problem() {
    let t = Tmp::new("private");
    let r = t.root();
    let d = Dir::open(&r).unwrap();
    let s = d.private_subdir(".ferry", true).unwrap();
    assert_eq!(s.stat().unwrap().mode() & 0o777, 0o700);
    // Again: it exists now.
    d.private_subdir(".ferry", true).unwrap();

    std::fs::create_dir(t.0.join("elsewhere")).unwrap();
    symlink(t.0.join("elsewhere"), r.join("linked")).unwrap();
    let e = d.private_subdir("linked", true).unwrap_err();
    assert!(e.to_string().contains("is a symbolic link"), "{e}");

    std::fs::create_dir(r.join("shared")).unwrap();
    std::fs::set_permissions(r.join("shared"), std::fs::Permissions::from_mode(0o775)).unwrap();
    let e = d.private_subdir("shared", false).unwrap_err();
    assert!(e.to_string().contains("chmod go-w"), "{e}");

    std::fs::write(r.join("plain"), "x").unwrap();
    let e = d.private_subdir("plain", true).unwrap_err();
    assert!(e.to_string().contains("is not a folder"), "{e}");

    // Another owner, without needing root to make one: the check itself.
    let st = s.stat().unwrap();
    let e = check_private(Path::new("/x/.ferry"), &st, st.uid() + 1).unwrap_err();
    assert!(e.to_string().contains("belongs to uid"), "{e}");
    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
}

#[test]
fn state_files_never_follow_links() {
    let t = Tmp::new("state");
    let r = t.root();
    let d = Dir::open(&r).unwrap();
    std::fs::write(t.0.join("victim"), "keep").unwrap();
    symlink(t.0.join("victim"), r.join("planted")).unwrap();
    let e = d.create_new(OsStr::new("planted"), 0o600).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
    let e = d
        .open_state_file(OsStr::new("planted"), 0o600, true)
        .unwrap_err();
    assert!(e.to_string().contains("is a symbolic link"), "{e}");
    std::fs::hard_link(t.0.join("victim"), r.join("linked")).unwrap();
    let e = d
        .open_state_file(OsStr::new("linked"), 0o600, true)
        .unwrap_err();
    assert!(e.to_string().contains("hard links"), "{e}");
    assert_eq!(std::fs::read(t.0.join("victim")).unwrap(), b"keep");
    let f = d.open_state_file(OsStr::new("new"), 0o600, true).unwrap();
    assert!(fstat(f.as_raw_fd()).unwrap().is_file());
}

#[test]
fn an_anchored_path_keeps_reaching_the_opened_folder_after_a_swap() {
    let t = Tmp::new("anchor");
    let r = t.root();
    std::fs::create_dir(r.join("state")).unwrap();
    std::fs::create_dir(t.0.join("evil")).unwrap();
    let d = Dir::open(&r.join("state")).unwrap();
    let a = d.anchored_path().unwrap();
    std::fs::rename(r.join("state"), r.join("moved")).unwrap();
    symlink(t.0.join("evil"), r.join("state")).unwrap();
    std::fs::write(a.join("f"), "x").unwrap();
    assert_eq!(std::fs::read(r.join("moved/f")).unwrap(), b"x");
    assert!(!t.0.join("evil/f").exists());
}

#[test]
fn names_renames_and_removal_stay_in_the_folder() {
    let t = Tmp::new("ops");
    let r = t.root();
    std::fs::create_dir(t.0.join("other")).unwrap();
    let (d, o) = (
        Dir::open(&r).unwrap(),
        Dir::open(&t.0.join("other")).unwrap(),
    );
    drop(d.create_new(OsStr::new("a"), 0o644).unwrap());
    drop(d.create_new(OsStr::new("b"), 0o644).unwrap());
    let mut names = d.names().unwrap();
    names.sort();
    assert_eq!(names, ["a", "b"]);
    let e = d
        .rename_noreplace(OsStr::new("a"), &d, OsStr::new("b"))
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
    d.rename_noreplace(OsStr::new("a"), &o, OsStr::new("c"))
        .unwrap();
    d.rename(OsStr::new("b"), &o, OsStr::new("c")).unwrap();
    assert!(d.names().unwrap().is_empty());
    o.remove_file(OsStr::new("c")).unwrap();
    d.sync().unwrap();
    assert!(d.statvfs().is_ok() && d.fs_type().is_ok());
}
/// Exactly `tries` names are tried: a free one after `tries - 1` taken ones is created,
/// one more taken name is `AlreadyExists`, any other error ends the tries at once, and
/// what is there is left alone (written for ingest's temporaries in the whole mutation
/// run: their own tests share the process's names with tests running alongside, so
/// `== AlreadyExists` as `!=` and the bound's `<` as `<=` could slip past them).
#[test]
fn create_first_free_tries_a_bounded_number_of_names() {
    const TRIES: u32 = 17;
    let t = Tmp::new("first-free");
    let root = t.0.join("root");
    let dir = Dir::open(&root).unwrap();
    let names = |n: u32| (0..n).map(|i| format!("t{i}")).collect::<Vec<_>>();
    for name in names(TRIES) {
        std::fs::write(root.join(name), b"theirs").unwrap();
    }
    let counter = |start: u32| {
        let mut k = start;
        move || {
            k += 1;
            OsString::from(format!("t{}", k - 1))
        }
    };
    // From t1: TRIES - 1 names taken (t1..=t16), the next one (t17) is free.
    let (name, _) = dir.create_first_free(0o666, TRIES, counter(1)).unwrap();
    assert_eq!(name, OsString::from(format!("t{}", TRIES)));
    // From t0: one more taken name than the retries allow (t17, made above, is taken too).
    let mut tried = 0;
    let e = dir
        .create_first_free(0o666, TRIES, || {
            tried += 1;
            OsString::from(format!("t{}", tried - 1))
        })
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
    assert_eq!(tried, TRIES);
    // Another error (a name with a missing folder in it) is not retried.
    let mut tried = 0;
    let e = dir
        .create_first_free(0o666, TRIES, || {
            tried += 1;
            OsString::from("no-such-folder/x")
        })
        .unwrap_err();
    assert_eq!((e.kind(), tried), (io::ErrorKind::NotFound, 1), "{e}");
    for name in names(TRIES) {
        assert_eq!(
            std::fs::read(root.join(&name)).unwrap(),
            b"theirs",
            "{name}"
        );
    }
}
