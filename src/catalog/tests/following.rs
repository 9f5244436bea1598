//! The live catalog: the follower (inotify, polling, a lost folder) against real folders.

use super::*;

fn follow(h: &Arc<CatalogHandle>) -> WatcherGuard {
    let g = h.follow(FollowOptions::default());
    assert!(
        g.is_live(),
        "inotify is not available here: the live catalog cannot be tested"
    );
    g
}

/// Waits (up to 10 s, generous for a loaded machine) until `pred` holds for the snapshot.
fn wait_until(h: &CatalogHandle, what: &str, pred: impl Fn(&Catalog) -> bool) -> Arc<Catalog> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut snap = h.snapshot();
    while !pred(&snap) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out waiting until {what}");
        snap = h.wait_for_change(snap.generation(), left.min(Duration::from_millis(200)));
    }
    snap
}

/// The served folder moved away is lost to inotify (its files stay listed), and watched again
/// once it is back where it was: a file written then is published (mutation run: the mask
/// without `IN_MOVE_SELF` kept watching a folder moved elsewhere as if nothing happened).
#[test]
fn live_root_moved_away_is_lost_then_watched_again_when_back() {
    let dir = TempDir::new("live-moved");
    dir.write("a.png", b"a");
    let h = open(&dir);
    let g = follow(&h);
    assert!(g.is_watching());
    let away = dir.path().with_extension("away");
    std::fs::rename(dir.path(), &away).unwrap();
    let until = |want: bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while g.is_watching() != want {
            assert!(Instant::now() < deadline, "is_watching never became {want}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    until(false);
    assert!(h.snapshot().by_file_name("a.png").is_some());
    std::fs::rename(&away, dir.path()).unwrap();
    until(true);
    dir.write("b.png", b"b");
    wait_until(&h, "b.png is published", |c| {
        c.by_file_name("b.png").is_some()
    });
    assert!(!h.spawn_watcher(Duration::from_secs(60)).is_watching());
}

/// A lost folder is looked for again every 2 s, the first time 2 s after the loss, not in a
/// loop, whether it is missing or another folder now stands at its path (mutation run: each
/// `now + REWATCH` as `-` looked at once, or in a busy loop).
#[test]
fn a_lost_folder_is_looked_for_every_two_seconds() {
    let dir = TempDir::new("live-lost");
    let h = open(&dir);
    let g = follow(&h);
    let away = dir.path().with_extension("gone");
    std::fs::rename(dir.path(), &away).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while g.is_watching() {
        assert!(Instant::now() < deadline, "the move was never noticed");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The first look 2 s after the loss, the next 2 s later: one in 3 s.
    std::thread::sleep(Duration::from_millis(3000));
    let missing = g.rewatch_tries();
    // Late on a loaded machine (0), never early (2: a look at once, then one 2 s later).
    assert!(missing <= 1, "{missing} looks in the 3 s after the loss");
    // Another folder at the path: not ours, looked at again on the same cadence.
    std::fs::create_dir(dir.path()).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let other = g.rewatch_tries() - missing;
    assert!((1..=2).contains(&other), "{other} looks in 2.5 s");
    assert!(!g.is_watching());
    drop(g);
    std::fs::remove_dir_all(&away).unwrap();
}

/// A follower woken once goes back to sleep: the wake-up bytes are drained, not left to wake
/// it again at once (mutation run: `drain_wakes` doing nothing spun the thread).
#[test]
fn a_woken_follower_sleeps_again() {
    let dir = TempDir::new("live-wake");
    let h = open(&dir);
    let g = follow(&h);
    g.simulate_overflow();
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.full_scans() < 2 {
        assert!(Instant::now() < deadline, "the wake was never acted on");
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = g.turns();
    std::thread::sleep(Duration::from_millis(500));
    let turns = g.turns() - before;
    assert!(turns <= 5, "{turns} wake-ups in 500 ms with nothing to do");
}

/// A name an event points at is looked at twice, a settle time apart, before it is hashed and
/// published: a file still changing without events (written through a mapping, say) is not
/// taken between two looks a moment apart (mutation run: `now + SETTLE` as `-` looked again
/// at once).
#[test]
fn a_name_is_published_only_after_two_looks_a_settle_time_apart() {
    let dir = TempDir::new("live-settle");
    let h = open(&dir);
    let _g = follow(&h);
    dir.write(".incoming", b"settled bytes");
    let t0 = Instant::now();
    std::fs::rename(dir.path().join(".incoming"), dir.path().join("s.png")).unwrap();
    wait_until(&h, "s.png is published", |c| {
        c.by_file_name("s.png").is_some()
    });
    let took = t0.elapsed();
    assert!(took >= live::SETTLE, "published {took:?} after its event");
}

#[test]
fn live_close_after_write_is_published() {
    let dir = TempDir::new("live-close");
    let h = open(&dir);
    let _g = follow(&h);
    dir.write("a.png", b"closed after writing");
    let snap = wait_until(&h, "a.png is published", |c| {
        c.by_file_name("a.png").is_some()
    });
    let e = snap.by_file_name("a.png").unwrap();
    assert_eq!(e.xxh64, xxh(b"closed after writing"));
    assert!(e.open().is_ok());
    assert_eq!(h.full_scans(), 1, "published without a rescan");
}

#[test]
fn live_file_held_open_is_not_published_until_closed() {
    use std::io::Write;
    let dir = TempDir::new("live-open");
    let h = open(&dir);
    let _g = follow(&h);
    let mut f = std::fs::File::create(dir.path().join("big.bin")).unwrap();
    f.write_all(b"first half, ").unwrap();
    // Long enough for the two looks and the hash of a file taken for finished, even on a
    // loaded machine (the mutation runs' two parallel builds kept 400 ms from telling).
    std::thread::sleep(live::SETTLE * 15);
    assert!(h.snapshot().by_file_name("big.bin").is_none());
    f.write_all(b"second half").unwrap();
    // A metadata change while it is open publishes nothing either.
    f.set_permissions(std::fs::Permissions::from_mode(0o640))
        .unwrap();
    let_follower_settle();
    assert!(h.snapshot().by_file_name("big.bin").is_none());
    drop(f);
    let snap = wait_until(&h, "big.bin is published after close", |c| {
        c.by_file_name("big.bin").is_some()
    });
    assert_eq!(
        snap.by_file_name("big.bin").unwrap().xxh64,
        xxh(b"first half, second half")
    );
}

/// A file just created and still open is waited for even before its first write: not
/// published empty (mutation run: the bound on names tracked as being written, `len <
/// MAX_WRITING` as `==` or `>`, left every new file untracked until it was written).
#[test]
fn live_file_created_and_open_is_not_published_before_its_first_write() {
    use std::io::Write;
    let dir = TempDir::new("live-created");
    let h = open(&dir);
    let _g = follow(&h);
    let mut f = std::fs::File::create(dir.path().join("new.bin")).unwrap();
    let_follower_settle();
    assert!(h.snapshot().by_file_name("new.bin").is_none());
    f.write_all(b"bytes").unwrap();
    drop(f);
    let snap = wait_until(&h, "new.bin is published after close", |c| {
        c.by_file_name("new.bin").is_some()
    });
    assert_eq!(snap.by_file_name("new.bin").unwrap().xxh64, xxh(b"bytes"));
}

#[test]
fn live_rewrite_in_place_retires_then_publishes_the_new_bytes() {
    use std::io::Write;
    let dir = TempDir::new("live-rewrite");
    dir.write("r.png", b"old content");
    let h = open(&dir);
    let _g = follow(&h);
    let old = h.snapshot().by_file_name("r.png").unwrap().clone();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("r.png"))
        .unwrap();
    f.write_all(b"NEW").unwrap();
    wait_until(&h, "r.png is retired while written", |c| {
        c.by_file_name("r.png").is_none()
    });
    drop(f);
    let snap = wait_until(&h, "r.png is back", |c| c.by_file_name("r.png").is_some());
    assert_eq!(
        snap.by_file_name("r.png").unwrap().xxh64,
        xxh(b"NEW content")
    );
    assert!(snap.by_xxh64(old.xxh64).is_none());
}

#[test]
fn live_move_in_move_out_and_delete() {
    let dir = TempDir::new("live-move");
    let away = TempDir::new("live-move-away");
    let h = open(&dir);
    let _g = follow(&h);
    // Written under a hidden name, then moved in: published on the move.
    dir.write(".partial", b"moved in");
    let_follower_settle();
    assert!(h.snapshot().is_empty());
    std::fs::rename(dir.path().join(".partial"), dir.path().join("m.png")).unwrap();
    wait_until(&h, "m.png is published", |c| {
        c.by_file_name("m.png").is_some()
    });
    // Moved out.
    std::fs::rename(dir.path().join("m.png"), away.path().join("m.png")).unwrap();
    wait_until(&h, "m.png is gone", |c| c.by_file_name("m.png").is_none());
    // Moved in from another folder, then deleted.
    std::fs::rename(away.path().join("m.png"), dir.path().join("back.png")).unwrap();
    wait_until(&h, "back.png is published", |c| {
        c.by_file_name("back.png").is_some()
    });
    std::fs::remove_file(dir.path().join("back.png")).unwrap();
    let snap = wait_until(&h, "back.png is gone", |c| c.is_empty());
    assert!(snap.by_xxh64(xxh(b"moved in")).is_none());
    drop(h);
    assert_eq!(
        open(&dir).snapshot().len(),
        0,
        "the journal recorded the removal"
    );
}

#[test]
fn live_symlink_in_is_published_with_its_targets_ids() {
    let dir = TempDir::new("live-symlink");
    dir.write("t.png", b"target");
    let h = open(&dir);
    let _g = follow(&h);
    std::os::unix::fs::symlink("t.png", dir.path().join("l.png")).unwrap();
    let snap = wait_until(&h, "l.png is published", |c| {
        c.by_file_name("l.png").is_some()
    });
    assert_eq!(snap.by_file_name("l.png").unwrap().xxh64, xxh(b"target"));
    assert!(snap.by_file_name("l.png").unwrap().open().is_ok());
}

#[test]
fn live_chmod_keeps_ids_and_serves_with_the_new_stamp() {
    let dir = TempDir::new("live-chmod");
    let p = dir.write("c.png", b"chmod me");
    let h = open(&dir);
    let _g = follow(&h);
    let old = h.snapshot().by_file_name("c.png").unwrap().clone();
    old.open().unwrap();
    let_clock_tick();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    let snap = wait_until(&h, "c.png has its new stamp", |c| {
        c.by_file_name("c.png")
            .is_some_and(|e| e.stamp.ctime_ns != old.stamp.ctime_ns)
    });
    let e = snap.by_file_name("c.png").unwrap();
    assert_eq!((e.xxh64, e.sha256), (old.xxh64, old.sha256));
    assert_eq!(e.open().unwrap().len(), 8);
    assert_eq!(old.open().unwrap_err().to_string(), "changed");
}

#[test]
fn live_hard_links_keep_every_name_serving() {
    let dir = TempDir::new("live-link");
    let other = TempDir::new("live-link-other");
    let p = dir.write("a.png", b"linked bytes");
    let h = open(&dir);
    let _g = follow(&h);
    let old = h.snapshot().by_file_name("a.png").unwrap().clone();
    let_clock_tick();
    // A second name inside the folder: both names end up served under the same ids.
    std::fs::hard_link(&p, dir.path().join("b.png")).unwrap();
    let snap = wait_until(&h, "b.png is published and a.png has its new ctime", |c| {
        c.by_file_name("b.png").is_some()
            && c.by_file_name("a.png")
                .is_some_and(|e| e.stamp.ctime_ns != old.stamp.ctime_ns)
    });
    for n in ["a.png", "b.png"] {
        let e = snap.by_file_name(n).unwrap();
        assert_eq!(e.sha256, old.sha256, "{n}");
        assert!(e.open().is_ok(), "{n} must serve");
    }
    // A link made in another folder sends no event here: the first open that fails reports
    // the drift, and the catalog catches up.
    let_clock_tick();
    std::fs::hard_link(&p, other.path().join("elsewhere.png")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let snap = h.snapshot();
        if snap.by_file_name("a.png").unwrap().open().is_ok() {
            assert_eq!(snap.by_file_name("a.png").unwrap().sha256, old.sha256);
            break;
        }
        assert!(Instant::now() < deadline, "a.png never served again");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn live_ctime_only_change_with_other_bytes_gets_new_ids() {
    use std::io::Write;
    let dir = TempDir::new("live-ctime");
    let p = dir.write("s.bin", b"original");
    let h = open(&dir);
    let old = h.snapshot().by_file_name("s.bin").unwrap().clone();
    let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
    let_clock_tick();
    // Same size, other bytes, and the mtime set back: only the ctime tells.
    let mut f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all(b"ORIGINAL").unwrap();
    f.set_times(std::fs::FileTimes::new().set_modified(mtime))
        .unwrap();
    drop(f);
    let now = FileStamp::from_metadata(&std::fs::metadata(&p).unwrap());
    assert_eq!(
        (now.dev, now.ino, now.size, now.mtime_ns),
        (
            old.stamp.dev,
            old.stamp.ino,
            old.stamp.size,
            old.stamp.mtime_ns
        )
    );
    assert_ne!(now.ctime_ns, old.stamp.ctime_ns);
    // A rescan re-hashes it.
    h.rescan().unwrap();
    let snap = h.snapshot();
    let e = snap.by_file_name("s.bin").unwrap();
    assert_eq!(e.xxh64, xxh(b"ORIGINAL"));
    assert!(snap.by_sha256(&old.sha256).is_none());
    // And so does the live catalog, from the events alone.
    let _g = follow(&h);
    let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
    let_clock_tick();
    let mut f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all(b"original").unwrap();
    f.set_times(std::fs::FileTimes::new().set_modified(mtime))
        .unwrap();
    drop(f);
    let snap = wait_until(&h, "s.bin has its first bytes' ids again", |c| {
        c.by_file_name("s.bin")
            .is_some_and(|e| e.xxh64 == xxh(b"original"))
    });
    assert_eq!(snap.by_file_name("s.bin").unwrap().sha256, old.sha256);
}

#[test]
fn live_overflow_falls_back_to_a_full_rescan() {
    let dir = TempDir::new("live-overflow");
    let h = open(&dir);
    let g = follow(&h);
    assert_eq!(h.full_scans(), 1);
    g.simulate_overflow();
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.full_scans() < 2 {
        assert!(Instant::now() < deadline, "no rescan after the overflow");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Following goes on after it.
    dir.write("after.png", b"after");
    wait_until(&h, "after.png is published", |c| {
        c.by_file_name("after.png").is_some()
    });
    drop(g);
    assert_eq!(
        Arc::strong_count(&h),
        1,
        "the follower holds no strong reference"
    );
}

#[test]
fn live_many_files_at_once_end_up_published_in_few_generations() {
    let dir = TempDir::new("live-burst");
    let h = open(&dir);
    let _g = follow(&h);
    let g0 = h.snapshot().generation();
    for i in 0..300 {
        dir.write(&format!("b{i:03}.gif"), format!("burst {i}").as_bytes());
    }
    let snap = wait_until(&h, "all 300 files are published", |c| c.len() == 300);
    // Measured, not asserted: batches publish many files per generation.
    eprintln!("300 files in {} generations", snap.generation() - g0);
    assert_eq!(h.full_scans(), 1);
}
