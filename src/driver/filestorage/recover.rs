//! Opening the store and recovering it before anything is served (filestorage.md 7.2):
//!
//! ```text
//!  lock ─► temporaries deleted ─► records loaded (the commit points)
//!       ─► each partial/<fid>/: state.json + journal replayed (cut at the first torn record)
//!            files with a record: part deleted; files all held without a record: completed
//!            (hashed, checked, linked, recorded, published); the rest stays missing
//!            state folded, journal emptied; a batch with nothing left is removed
//!       ─► markers made to match the records ─► objects no record uses deleted
//!       ─► public records never published: published now ─► ledgers rebuilt from records and
//!          partial states ─► retention sweep
//! ```
//!
//! Out of scope: serving (the store's other methods), the catalog's own recovery.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Arc, PoisonError};

use super::disk::{self, FileHash, TEMP_PREFIX};
use super::store::{
    io_err, lock, open_journal, part_path, ObjectStamp, Partial, PartialInner, Store, StoreError,
    StoreOptions,
};
use crate::catalog::CatalogHandle;
use crate::ingest::IngestDir;
use crate::proto::filestorage::ids::{store_id, Uuid};
use crate::proto::filestorage::store::journal::{replay, RECORD_LEN};
use crate::proto::filestorage::store::missing::{chunk_count, chunk_len};
use crate::proto::filestorage::store::names::PUBLIC;
use crate::proto::filestorage::store::quota::Reservation;
use crate::proto::filestorage::store::records::{PartialState, Record};
use crate::wire::hex;

impl Store {
    /// Opens the store of `catalog`'s folder (`<root>/.ferry/filestorage`, created if missing),
    /// takes its lock, and recovers it (see the module doc). Fails if another process holds
    /// the store.
    pub fn open(catalog: Arc<CatalogHandle>, opts: StoreOptions) -> Result<Arc<Store>, StoreError> {
        // The store folder is opened from the catalog's `.ferry` descriptor and checked
        // private; every path below is anchored at its descriptor, and publishing at the
        // catalog root's (issue 15 item 3).
        let shown = super::store_dir(&catalog.state_dir());
        let store_dir = super::open_store_dir(catalog.state())
            .map_err(io_err(format!("open {}", shown.display())))?;
        let dir = super::anchored_path(&store_dir)
            .map_err(io_err(format!("open {}", shown.display())))?;
        let root = super::anchored_path(catalog.root_dir())
            .map_err(io_err(format!("open {}", catalog.root().display())))?;
        let lock_file = take_store_lock(&dir)?;
        for sub in ["objects", "records", "by-owner", "by-tag", "partial"] {
            let d = dir.join(sub);
            disk::ensure_dir(&d).map_err(io_err(format!("create {}", d.display())))?;
        }
        let ingest =
            IngestDir::new(&root, &dir).map_err(io_err(format!("ingest {}", dir.display())))?;
        let store = Store::assemble(root, dir, store_dir, catalog, opts, ingest, lock_file);
        store.recover(super::unix_now().max(0) as u64)?;
        Ok(Arc::new(store))
    }

    fn recover(&self, now: u64) -> Result<(), StoreError> {
        for d in [
            self.dir.clone(),
            self.objects_dir(),
            self.records_dir(),
            self.partial_dir(),
        ] {
            remove_temporaries(&d);
        }
        let _ = self.ingest.clean_stale();
        self.load_records()?;
        let partial_dir = self.partial_dir();
        let entries = fs::read_dir(&partial_dir)
            .map_err(io_err(format!("read {}", partial_dir.display())))?;
        for e in entries.flatten() {
            let name = e.file_name();
            let fid = name.to_str().and_then(|n| n.parse::<Uuid>().ok());
            match fid {
                Some(fid) if e.file_type().is_ok_and(|t| t.is_dir()) => {
                    if let Err(err) = self.recover_partial(fid, now) {
                        eprintln!("filestorage: recovery of partial transfer {fid}: {err}");
                    }
                }
                _ => eprintln!(
                    "filestorage: recovery: {} is not a partial transfer; left alone",
                    e.path().display()
                ),
            }
        }
        self.rebuild_markers();
        self.remove_unused_objects();
        self.publish_pending();
        self.rebuild_ledgers();
        let swept = self.sweep(now);
        let (records, partials) = (self.record_count(), self.partial_count());
        if self.opts.verbose || swept > 0 {
            eprintln!(
                "filestorage: store {}: {records} files, {partials} partial transfers{}",
                self.store_dir.path().display(),
                if swept > 0 {
                    format!(" ({swept} expired)")
                } else {
                    String::new()
                }
            );
        }
        Ok(())
    }

    /// Reads every record and makes it visible; a record whose object is missing or of the
    /// wrong size is kept (FETCH says `storage-error`) and logged.
    fn load_records(&self) -> Result<(), StoreError> {
        let dir = self.records_dir();
        let entries = fs::read_dir(&dir).map_err(io_err(format!("read {}", dir.display())))?;
        for e in entries.flatten() {
            let path = e.path();
            let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Some(id) = name
                .strip_suffix(".json")
                .and_then(|i| i.parse::<Uuid>().ok())
            else {
                continue;
            };
            let record = match fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| Record::decode(&b).map_err(|e| e.to_string()))
            {
                Ok(r) if r.id == id => r,
                Ok(_) => {
                    eprintln!(
                        "filestorage: {}: id does not match its name",
                        path.display()
                    );
                    continue;
                }
                Err(err) => {
                    eprintln!("filestorage: {}: {err}", path.display());
                    continue;
                }
            };
            match fs::metadata(self.object_path(&record.sha256)) {
                Ok(m) if m.len() == record.size => {
                    lock(&self.objects).insert(record.sha256, ObjectStamp::of(&m));
                }
                _ => eprintln!(
                    "filestorage: record {}: its object {} is missing or changed",
                    record.id,
                    hex::encode(&record.sha256)
                ),
            }
            if let Some(p) = &record.published {
                lock(&self.published).insert(p.clone(), record.sha256);
            }
            self.register(&record);
        }
        Ok(())
    }

    /// Replays one partial transfer and completes what it can.
    fn recover_partial(&self, fid: Uuid, now: u64) -> io::Result<()> {
        let dir = self.partial_dir().join(fid.to_string());
        let state = fs::read(dir.join("state.json"))
            .ok()
            .and_then(|b| PartialState::decode(&b).ok());
        let Some(mut state) = state else {
            // Created and never acknowledged (the state is written before the Ok).
            eprintln!("filestorage: recovery: {fid} has no usable state; removed");
            return fs::remove_dir_all(&dir);
        };
        let journal_path = dir.join("journal");
        let mut journal_mtime = 0;
        if let Ok(bytes) = fs::read(&journal_path) {
            let files = state.files.len();
            let good = replay(&bytes, |r| {
                if (r.file as usize) < files {
                    state.missing.remove(r.file as usize, r.n);
                }
            });
            if good < bytes.len() {
                let f = fs::OpenOptions::new().write(true).open(&journal_path)?;
                f.set_len(good as u64)?;
                f.sync_all()?;
            }
            debug_assert_eq!(good % RECORD_LEN, 0);
            journal_mtime = fs::metadata(&journal_path).map_or(0, |m| m.mtime().max(0) as u64);
        }
        let n = state.files.len();
        let counts = state.chunk_counts();
        // A journal naming chunks of a part that is gone or cut (its directory entry was not
        // durable at a crash, or a hand in the store) must not count them as held: the file
        // would complete from zeros, fail its digest and leave the client guessing. The whole
        // file is asked for again instead.
        for (i, &count) in counts.iter().enumerate() {
            let size = state.files[i].size;
            if size == 0 || state.missing.missing_in_file(i) == count {
                continue;
            }
            let len = fs::symlink_metadata(part_path(&dir, i as u32))
                .ok()
                .filter(|m| m.file_type().is_file())
                .map(|m| m.len());
            if len != Some(size) {
                eprintln!(
                    "filestorage: recovery: {fid} file {i}: part {}; every chunk asked for again",
                    len.map_or_else(
                        || "missing".to_string(),
                        |l| format!("of {l} bytes, not {size}")
                    )
                );
                state.missing.reset_file(i, count);
            }
        }
        let public = state.tags.iter().any(|t| t == PUBLIC);
        let hashes: Vec<Option<FileHash>> = (0..n)
            .map(|i| {
                // A file with no chunk held yet can be hashed in order as it arrives.
                let held = counts[i] - state.missing.missing_in_file(i);
                (held == 0).then(|| FileHash::new(public))
            })
            .collect();
        let p = Partial::new(fid, dir.clone());
        let mut g = lock(&p.inner);
        *g = PartialInner {
            parts: vec![None; n],
            hashes,
            journal: Some(open_journal(&dir)?),
            touched: state.touched.max(journal_mtime),
            state: Some(state),
            ..PartialInner::default()
        };
        let completed = self.settle_files(&p, &mut g, now);
        self.fold(&p, &mut g)?;
        let state = g.state.as_ref().expect("set above");
        if state.missing.is_empty() {
            drop(g);
            if completed > 0 {
                self.log(format_args!("recovery: {fid}: batch completed"));
            }
            return fs::remove_dir_all(&dir);
        }
        let unwritten: u64 = state
            .missing
            .ranges()
            .map(|r| {
                let size = state.files[r.file as usize].size;
                (r.first..r.end)
                    .map(|k| chunk_len(size, state.chunk_size, k).unwrap_or(0))
                    .sum::<u64>()
            })
            .sum();
        g.promise = Some(self.promise_recovered(unwritten));
        drop(g);
        lock(&self.partials).insert(fid, Arc::new(p));
        Ok(())
    }

    /// Files with a record: complete, part deleted. Files all held without a record: completed
    /// now. Returns how many were completed.
    fn settle_files(&self, p: &Partial, g: &mut PartialInner, now: u64) -> usize {
        let Some(state) = g.state.as_ref() else {
            return 0;
        };
        let n = state.files.len();
        let mut completed = 0;
        for i in 0..n {
            let id = store_id(&p.fid, i as u64);
            let has_record = self
                .records
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .contains_key(&id);
            let Some(state) = g.state.as_mut() else {
                break;
            };
            if has_record {
                state.missing.reset_file(i, 0);
                let _ = disk::remove_file(&part_path(&p.dir, i as u32));
                continue;
            }
            if !state.missing.is_file_complete(i) {
                continue;
            }
            match self.complete_recovered(p, g, i as u32, now) {
                Ok(()) => completed += 1,
                Err(e) => {
                    // Not stored: every chunk is missing again, so the resume asks for them
                    // (a file left "all held" without a record read as stored to the client).
                    eprintln!("filestorage: recovery: {} file {i}: {e}", p.fid);
                    self.drop_part(p, g, i as u32);
                    self.reset_file(p, g, i as u32);
                }
            }
        }
        completed
    }

    /// Completes, at start, a file all of whose chunks are held but which has no record.
    fn complete_recovered(
        &self,
        p: &Partial,
        g: &mut PartialInner,
        file: u32,
        now: u64,
    ) -> io::Result<()> {
        let state = g
            .state
            .as_ref()
            .ok_or_else(|| io::Error::other("no state"))?;
        let spec = state.files[file as usize].clone();
        let (tags, uid) = (state.tags.clone(), state.uid);
        if spec.size == 0 {
            self.store_empty(p.fid, file, &spec, &tags, uid, now)?;
            return Ok(());
        }
        let path = part_path(&p.dir, file);
        let part = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&path)?;
        if part.metadata()?.len() != spec.size {
            return Err(io::Error::other("part has the wrong size"));
        }
        let mut h = FileHash::new(tags.iter().any(|t| t == PUBLIC));
        h.read_from(&part, spec.size)?;
        let (sha, xxh) = h.finish();
        if spec.sha256.is_some_and(|d| d != sha) {
            // As at run time: every chunk of the file is missing again.
            if let Some(s) = g.state.as_mut() {
                let nb = chunk_count(spec.size, s.chunk_size);
                s.missing.reset_file(file as usize, nb);
            }
            return Err(io::Error::other(
                "digest mismatch: its chunks are missing again",
            ));
        }
        // The part may already be 0444 and linked (a crash after the link): both are kept.
        self.link_object(&part, &path, &sha)?;
        let (_, registration) =
            self.commit_record(p.fid, file, &spec, &tags, uid, sha, xxh, now, true)?;
        drop(part);
        disk::remove_file(&path)?;
        self.register_published(registration);
        self.log(format_args!("recovery: {} file {file} completed", p.fid));
        Ok(())
    }

    /// Makes `by-owner/` and `by-tag/` hold exactly the markers the records call for.
    fn rebuild_markers(&self) {
        let records = self.records.read().unwrap_or_else(PoisonError::into_inner);
        let mut want: HashSet<std::path::PathBuf> = HashSet::new();
        for r in records.values() {
            let id = r.id.to_string();
            want.insert(
                self.dir
                    .join("by-owner")
                    .join(r.owner.to_string())
                    .join(&id),
            );
            for t in &r.tags {
                want.insert(self.dir.join("by-tag").join(t).join(&id));
            }
        }
        for kind in ["by-owner", "by-tag"] {
            let Ok(groups) = fs::read_dir(self.dir.join(kind)) else {
                continue;
            };
            for g in groups.flatten() {
                let Ok(markers) = fs::read_dir(g.path()) else {
                    continue;
                };
                for m in markers.flatten() {
                    if !want.contains(&m.path()) {
                        let _ = fs::remove_file(m.path());
                    }
                }
                // An emptied group goes too (fails harmlessly when not empty).
                let _ = fs::remove_dir(g.path());
            }
        }
        for r in records.values() {
            self.write_markers(r);
        }
    }

    /// Deletes objects no record references.
    fn remove_unused_objects(&self) {
        let used: HashSet<String> = self
            .records
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|r| hex::encode(&r.sha256))
            .collect();
        let Ok(entries) = fs::read_dir(self.objects_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            if !used.contains(name) && e.file_type().is_ok_and(|t| t.is_file()) {
                self.log(format_args!("recovery: unused object {name} deleted"));
                let _ = fs::remove_file(e.path());
            }
        }
        let _ = disk::sync_dir(&self.objects_dir());
    }

    /// Publishes `public` records that never were (a crash between record and publication).
    fn publish_pending(&self) {
        let pending: Vec<Record> = self
            .records
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|r| r.published.is_none() && r.tags.iter().any(|t| t == PUBLIC))
            .cloned()
            .collect();
        for mut r in pending {
            match disk::hash_path(&self.object_path(&r.sha256)) {
                Ok((sha, xxh, _)) if sha == r.sha256 => {
                    let registration = self.publish(&mut r, Some(xxh));
                    self.register_published(registration);
                }
                _ => eprintln!(
                    "filestorage: record {}: object unreadable; not published",
                    r.id
                ),
            }
        }
    }

    /// Usage from records, reservations from partial states (spec 7.2 recovery).
    fn rebuild_ledgers(&self) {
        lock(&self.ledgers).clear();
        let records = self.records.read().unwrap_or_else(PoisonError::into_inner);
        let mut by_uid: HashMap<u32, Vec<u64>> = HashMap::new();
        for r in records.values() {
            by_uid.entry(r.owner).or_default().push(r.size);
        }
        for (uid, sizes) in by_uid {
            let l = self.ledger(uid);
            let mut l = lock(&l);
            for s in sizes {
                l.add_record(s);
            }
        }
        let partials: Vec<Arc<Partial>> = lock(&self.partials).values().cloned().collect();
        for p in partials {
            let g = lock(&p.inner);
            let Some(state) = g.state.as_ref() else {
                continue;
            };
            let mut r = Reservation {
                transfer: true,
                ..Reservation::default()
            };
            for (i, f) in state.files.iter().enumerate() {
                if !records.contains_key(&store_id(&p.fid, i as u64)) {
                    r.bytes += f.size;
                    r.files += 1;
                }
            }
            lock(&self.ledger(state.uid)).add_reservation(r);
        }
    }
}

/// Deletes the store's temporaries (`.tmp-*`) left in `dir` by a crash.
fn remove_temporaries(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(TEMP_PREFIX))
            && e.file_type().is_ok_and(|t| t.is_file())
        {
            let _ = fs::remove_file(e.path());
        }
    }
    // Temporaries inside partial transfers' folders too.
    if dir.ends_with("partial") {
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    remove_temporaries(&e.path());
                }
            }
        }
    }
}

/// `<store>/lock`, exclusively locked for the store's life (one server or `rm` at a time).
pub(super) fn take_store_lock(dir: &Path) -> Result<fs::File, StoreError> {
    let path = dir.join("lock");
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(&path)
        .map_err(io_err(format!("open {}", path.display())))?;
    // SAFETY: flock only acts on the descriptor, which `f` keeps open for the call.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            return Err(StoreError::Locked(path));
        }
        return Err(io_err(format!("lock {}", path.display()))(e));
    }
    Ok(f)
}
