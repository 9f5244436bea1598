//! Receiving a batch's chunks (filestorage.md 4.3, 7.2): a chunk claimed and written into its
//! part, made durable in groups (one fdatasync per part, then the journal), and a file whose
//! last chunk landed completed: hashed, checked, linked as its object, recorded, published.
//! The store's diagram (`store`) shows the whole life of a chunk.
//!
//! Out of scope: authentication, retention, QUERY and FETCH (`store`), recovery (`recover`).

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use super::disk::{self, FileHash};
use super::store::{
    lock, part_path, storage_error, tagged_name, Begun, ObjectStamp, Partial, PartialInner,
    PendingChunk, Registration, Store, FOLD_EVERY,
};
use crate::ingest::{Collision, Expect, Publisher};
use crate::proto::filestorage::ids::{store_id, Uuid};
use crate::proto::filestorage::json::FileSpec;
use crate::proto::filestorage::reason::{Code, Reason};
use crate::proto::filestorage::server::{ChunkWrite, WriteOutcome};
use crate::proto::filestorage::store::auth::EMPTY_SHA256;
use crate::proto::filestorage::store::index::Entry;
use crate::proto::filestorage::store::journal::JournalRecord;
use crate::proto::filestorage::store::missing::chunk_count;
use crate::proto::filestorage::store::names::{MAX_NAME, PUBLIC};
use crate::proto::filestorage::store::records::Record;
use crate::wire::hex;

impl Store {
    /// Spec 4.3 steps 4-5 up to the write: a held chunk is answered at once; a missing one is
    /// claimed and written (durable after [`finish_writes`](Self::finish_writes)).
    pub fn begin_write(&self, active: Option<&Arc<Partial>>, w: &ChunkWrite<'_>) -> Begun {
        let p = match active {
            Some(p) if p.fid == w.fid => p.clone(),
            _ => match lock(&self.partials).get(&w.fid) {
                Some(p) => p.clone(),
                None => return Begun::Done(self.outcome_without_partial(w.fid, w.file)),
            },
        };
        let key = (w.file, w.n);
        let part = {
            let mut g = lock(&p.inner);
            let Some(state) = g.state.as_ref().filter(|_| !g.deleted && !g.creating) else {
                drop(g);
                return Begun::Done(self.outcome_without_partial(w.fid, w.file));
            };
            if !state.missing.contains(w.file as usize, w.n) {
                return Begun::Done(WriteOutcome::Stored);
            }
            let pending = PendingChunk {
                partial: p.clone(),
                file: w.file,
                n: w.n,
                len: w.data.len() as u64,
            };
            if g.claimed.contains(&key) {
                return Begun::Follower(pending);
            }
            let part = match p.part(&mut g, w.file) {
                Ok(f) => f,
                Err(e) => {
                    self.log(format_args!("{}: part {}: {e}", w.fid, w.file));
                    return Begun::Done(WriteOutcome::Failed(storage_error()));
                }
            };
            if let Some(h) = g.hashes.get_mut(w.file as usize).and_then(Option::as_mut) {
                if h.upto == w.offset {
                    h.update(w.data);
                }
            }
            g.claimed.insert(key);
            (part, pending)
        };
        let (part, pending) = part;
        if let Err(e) = part.write_all_at(w.data, w.offset) {
            self.log(format_args!("{}: write part {}: {e}", w.fid, w.file));
            let mut g = lock(&p.inner);
            g.claimed.remove(&key);
            invalidate_hash(&mut g, w.file);
            p.settled.notify_all();
            return Begun::Done(WriteOutcome::Failed(storage_error()));
        }
        Begun::Leader(pending)
    }

    /// A write for a batch with no partial state: Ok if the file is stored (another
    /// connection completed it), else `storage-error`.
    fn outcome_without_partial(&self, fid: Uuid, file: u32) -> WriteOutcome {
        let id = store_id(&fid, u64::from(file));
        if self
            .records
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&id)
        {
            WriteOutcome::Stored
        } else {
            WriteOutcome::Failed(storage_error())
        }
    }

    /// Makes the chunks `leaders` wrote into `p` durable (one `fdatasync` per part, then the
    /// journal records and one `fdatasync` of the journal), marks them held, completes the
    /// files whose last chunk this was, and returns one outcome per leader, in order.
    pub fn finish_writes(
        &self,
        p: &Arc<Partial>,
        leaders: &[(u32, u64, u64)],
        now: u64,
    ) -> Vec<WriteOutcome> {
        let mut files: Vec<u32> = leaders.iter().map(|l| l.0).collect();
        files.sort_unstable();
        files.dedup();
        let (parts, created): (Vec<_>, _) = {
            let g = lock(&p.inner);
            let parts: Vec<(u32, Option<Arc<File>>)> = files
                .iter()
                .map(|&f| (f, g.parts.get(f as usize).cloned().flatten()))
                .collect();
            let created = (g.parts_created > g.parts_dir_synced).then_some(g.parts_created);
            (parts, created)
        };
        let mut failed: HashSet<u32> = HashSet::new();
        // A part created since the folder was last synced: its name must be durable before
        // any of its chunks is journaled, or a crash could keep the record and lose the file.
        if let Some(created) = created {
            match disk::sync_dir(&p.dir) {
                Ok(()) => {
                    let mut g = lock(&p.inner);
                    g.parts_dir_synced = g.parts_dir_synced.max(created);
                }
                Err(e) => {
                    self.log(format_args!("{}: sync partial folder: {e}", p.fid));
                    failed.extend(files.iter().copied());
                }
            }
        }
        for (file, part) in &parts {
            let r = match part {
                Some(f) => f.sync_data(),
                None => Err(io::Error::other("part closed")),
            };
            if let Err(e) = r {
                self.log(format_args!("{}: sync part {file}: {e}", p.fid));
                failed.insert(*file);
            }
        }
        let mut g = lock(&p.inner);
        let mut journal = Vec::with_capacity(leaders.len() * 16);
        for &(file, n, _) in leaders {
            if !failed.contains(&file) {
                journal.extend_from_slice(&JournalRecord { file, n }.encode());
            }
        }
        if !journal.is_empty() {
            let r = match g.journal.as_mut() {
                Some(j) => {
                    // A write cut short (ENOSPC, EIO) must not leave a torn record: every later
                    // record would be misread, and a restart would stop replaying there. The
                    // journal goes back to its length before this write.
                    let before = j.metadata().map(|m| m.len());
                    let r = std::io::Write::write_all(j, &journal).and_then(|()| j.sync_data());
                    if r.is_err() {
                        if let Ok(len) = before {
                            let _ = j.set_len(len);
                        }
                    }
                    r
                }
                None => Err(io::Error::other("journal closed")),
            };
            if let Err(e) = r {
                self.log(format_args!("{}: journal: {e}", p.fid));
                failed.extend(leaders.iter().map(|l| l.0));
            } else {
                g.journal_records += (journal.len() / 16) as u64;
            }
        }
        g.touched = g.touched.max(now);
        let mut outcomes = Vec::with_capacity(leaders.len());
        // (outcome index, file) of the chunks that were their file's last.
        let mut completing: Vec<(usize, u32)> = Vec::new();
        for &(file, n, len) in leaders {
            g.claimed.remove(&(file, n));
            if failed.contains(&file) {
                invalidate_hash(&mut g, file);
                outcomes.push(WriteOutcome::Failed(storage_error()));
                continue;
            }
            let gi = &mut *g;
            let Some(state) = gi.state.as_mut() else {
                outcomes.push(WriteOutcome::Failed(storage_error()));
                continue;
            };
            let removed = state.missing.remove(file as usize, n);
            if removed {
                if let Some(p) = gi.promise.as_mut() {
                    p.landed(len);
                }
            }
            if removed && state.missing.is_file_complete(file as usize) {
                completing.push((outcomes.len(), file));
            }
            outcomes.push(WriteOutcome::Stored);
        }
        if !completing.is_empty() {
            let files: Vec<u32> = completing.iter().map(|c| c.1).collect();
            let results = self.complete_files(p, &mut g, &files, now);
            for ((at, _), r) in completing.into_iter().zip(results) {
                outcomes[at] = match r {
                    Ok(id) => WriteOutcome::Completed { id },
                    Err(r) => WriteOutcome::Failed(r),
                };
            }
        }
        if g.journal_records >= FOLD_EVERY {
            if let Err(e) = self.fold(p, &mut g) {
                self.log(format_args!("{}: fold: {e}", p.fid));
            }
        }
        if g.state.as_ref().is_some_and(|s| s.missing.is_empty()) && !g.deleted {
            self.finish_batch(p, &mut g);
        }
        p.settled.notify_all();
        outcomes
    }

    /// Gives back the claim of a chunk that will never be made durable by its writer (its
    /// connection failed): the chunk stays missing and anyone may write it.
    pub fn abandon(&self, c: &PendingChunk) {
        let mut g = lock(&c.partial.inner);
        if g.claimed.remove(&(c.file, c.n)) {
            invalidate_hash(&mut g, c.file);
        }
        c.partial.settled.notify_all();
    }

    /// A follower's answer: waits (up to `timeout`) for the claim on its chunk to settle.
    pub fn wait_follower(&self, c: &PendingChunk, timeout: Duration) -> WriteOutcome {
        let deadline = Instant::now() + timeout;
        let mut g = lock(&c.partial.inner);
        while g.claimed.contains(&(c.file, c.n)) && !g.deleted {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return WriteOutcome::Failed(storage_error());
            }
            g = c
                .partial
                .settled
                .wait_timeout(g, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let held = match g.state.as_ref().filter(|_| !g.deleted) {
            Some(s) => !s.missing.contains(c.file as usize, c.n),
            None => {
                drop(g);
                return self.outcome_without_partial(c.partial.fid, c.file);
            }
        };
        if held {
            WriteOutcome::Stored
        } else {
            WriteOutcome::Failed(storage_error())
        }
    }

    /// Folds the missing set into `state.json` (atomically) and empties the journal.
    pub(super) fn fold(&self, p: &Partial, g: &mut PartialInner) -> io::Result<()> {
        let Some(state) = g.state.as_mut() else {
            return Ok(());
        };
        state.touched = state.touched.max(g.touched);
        let mut json = Vec::new();
        state.encode(&mut json);
        disk::write_atomic(&p.dir, "state.json", &json)?;
        if let Some(j) = g.journal.as_mut() {
            j.set_len(0)?;
            j.sync_data()?;
        }
        g.journal_records = 0;
        Ok(())
    }

    /// Every chunk of `file` missing again (digest mismatch, or a completion that failed).
    pub(super) fn reset_file(&self, p: &Partial, g: &mut PartialInner, file: u32) {
        let Some(state) = g.state.as_mut() else {
            return;
        };
        let size = state.files[file as usize].size;
        let nb = chunk_count(size, state.chunk_size);
        state.missing.reset_file(file as usize, nb);
        let public = state.tags.iter().any(|t| t == PUBLIC);
        if let Some(p) = g.promise.as_mut() {
            p.add(size);
        }
        if let Some(h) = g.hashes.get_mut(file as usize) {
            *h = Some(FileHash::new(public));
        }
        if let Err(e) = self.fold(p, g) {
            self.log(format_args!("{}: fold after reset: {e}", p.fid));
        }
    }

    /// Completes the files of `p` listed in `files`, all of whose chunks are held, as one group
    /// (spec 7.2): each step is done for all of them before the next, so each file still goes
    /// object, record, markers, publication, but the objects folder and the records folder are
    /// each synced once per group instead of once per file. A file that fails has all its
    /// chunks missing again (and `digest-mismatch` says so when its bytes were wrong).
    fn complete_files(
        &self,
        p: &Partial,
        g: &mut PartialInner,
        files: &[u32],
        now: u64,
    ) -> Vec<Result<Uuid, Reason>> {
        let mut results: Vec<Option<Result<Uuid, Reason>>> = vec![None; files.len()];
        let Some(state) = g.state.as_ref() else {
            return vec![Err(storage_error()); files.len()];
        };
        let (tags, uid) = (state.tags.clone(), state.uid);
        let public = tags.iter().any(|t| t == PUBLIC);
        // A file whose completion failed after its part was linked or gone. An object made for
        // it is not removed: another batch may have found it and recorded its file on it
        // meanwhile (objects are shared by content); one no record references is removed by
        // the next start's cleanup.
        let fail = |g: &mut PartialInner, file: u32| {
            self.drop_part(p, g, file);
            self.reset_file(p, g, file);
            Err(storage_error())
        };
        // 1. Hash, compare, make the part the object (0444, a link).
        // (index in `files`, its spec, SHA-256, xxHash64 when public)
        type Linked = (usize, FileSpec, [u8; 32], Option<u64>);
        let mut linked: Vec<Linked> = Vec::new();
        for (k, &file) in files.iter().enumerate() {
            let Some(spec) = g.state.as_ref().map(|s| s.files[file as usize].clone()) else {
                results[k] = Some(Err(storage_error()));
                continue;
            };
            let part = p.part(g, file);
            let hashed = part.and_then(|part| {
                let mut h = g
                    .hashes
                    .get_mut(file as usize)
                    .and_then(Option::take)
                    .unwrap_or_else(|| FileHash::new(public));
                if h.upto > spec.size || (public && h.xxh.is_none()) {
                    h = FileHash::new(public);
                }
                h.read_from(&part, spec.size)?;
                Ok((part, h.finish()))
            });
            let (part, (sha, xxh)) = match hashed {
                Ok(v) => v,
                Err(e) => {
                    self.log(format_args!("{}: hash part {file}: {e}", p.fid));
                    results[k] = Some(fail(g, file));
                    continue;
                }
            };
            if spec.sha256.is_some_and(|d| d != sha) {
                self.log(format_args!("{}: file {file}: digest mismatch", p.fid));
                self.reset_file(p, g, file);
                results[k] = Some(Err(Reason::with_detail(Code::DigestMismatch, file)));
                continue;
            }
            match self.link_object_unsynced(&part, &part_path(&p.dir, file), &sha) {
                Ok(_) => linked.push((k, spec, sha, xxh)),
                Err(e) => {
                    self.log(format_args!("{}: object of file {file}: {e}", p.fid));
                    results[k] = Some(fail(g, file));
                }
            }
        }
        // 2. The objects exist durably.
        if !linked.is_empty() {
            if let Err(e) = disk::sync_dir(&self.objects_dir()) {
                self.log(format_args!("{}: sync objects: {e}", p.fid));
                for (k, ..) in linked.drain(..) {
                    results[k] = Some(fail(g, files[k]));
                }
            }
        }
        // 3. The records: the commit points, durable together.
        let mut recorded = Vec::new();
        for (k, spec, sha, xxh) in linked {
            let record = Record {
                id: store_id(&p.fid, u64::from(files[k])),
                owner: uid,
                name: spec.name.clone(),
                size: spec.size,
                sha256: sha,
                tags: tags.clone(),
                fid: p.fid,
                file: files[k],
                created: now,
                published: None,
            };
            match self.write_record_unsynced(&record) {
                Ok(()) => recorded.push((k, record, xxh)),
                Err(e) => {
                    self.log(format_args!("{}: record of file {}: {e}", p.fid, files[k]));
                    results[k] = Some(fail(g, files[k]));
                }
            }
        }
        if !recorded.is_empty() {
            if let Err(e) = disk::sync_dir(&self.records_dir()) {
                self.log(format_args!("{}: sync records: {e}", p.fid));
                for (k, record, _) in recorded.drain(..) {
                    let _ = fs::remove_file(self.records_dir().join(format!("{}.json", record.id)));
                    results[k] = Some(fail(g, files[k]));
                }
            }
        }
        // 4. Markers, visibility, publication; then the part goes and the reservation becomes
        // usage.
        for (k, mut record, xxh) in recorded {
            let registration = match self.finish_record(&mut record, xxh, true) {
                Ok(r) => r,
                Err(e) => {
                    // The record is durable: the file is stored; only its stamp is unknown.
                    self.log(format_args!("{}: object of {}: {e}", p.fid, record.id));
                    None
                }
            };
            lock(&self.ledger(uid)).complete_file(record.size);
            self.drop_part(p, g, files[k]);
            // Only now: removing the part's name moved the inode's ctime.
            self.register_published(registration);
            self.log(format_args!(
                "stored {} ({} bytes) as {}{}",
                record.name,
                record.size,
                record.id,
                record
                    .published
                    .as_ref()
                    .map(|n| format!(", published as {n}"))
                    .unwrap_or_default()
            ));
            results[k] = Some(Ok(record.id));
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(storage_error())))
            .collect()
    }

    /// Closes and deletes the part of `file` (its bytes live on in the object, if linked).
    pub(super) fn drop_part(&self, p: &Partial, g: &mut PartialInner, file: u32) {
        if let Some(slot) = g.parts.get_mut(file as usize) {
            *slot = None;
        }
        let _ = disk::remove_file(&part_path(&p.dir, file));
    }

    /// Makes `part` (0444) the object of `sha` by a hard link; an existing object is the same
    /// content and is kept. Returns whether the link was made now.
    pub(super) fn link_object(&self, part: &File, path: &Path, sha: &[u8; 32]) -> io::Result<bool> {
        let created = self.link_object_unsynced(part, path, sha)?;
        disk::sync_dir(&self.objects_dir())?;
        Ok(created)
    }

    /// [`link_object`](Self::link_object) without syncing the objects folder.
    ///
    /// An existing object is kept only while it is still what was stored (its stamp as this
    /// process knows it). A published file is a link to its object, so a file edited in place
    /// in the served folder changes the object too: FETCH then refuses it (`storage-error`),
    /// and the next upload of the same content replaces it with its verified part instead of
    /// taking the edited bytes for that content (and recording their stamp as good).
    fn link_object_unsynced(&self, part: &File, path: &Path, sha: &[u8; 32]) -> io::Result<bool> {
        part.set_permissions(fs::Permissions::from_mode(0o444))?;
        let object = self.object_path(sha);
        match fs::hard_link(path, &object) {
            Ok(()) => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let known = lock(&self.objects).get(sha).copied();
        let now = fs::symlink_metadata(&object).map(|m| (m.is_file(), ObjectStamp::of(&m)));
        if let (Some(known), Ok((true, now))) = (known, now) {
            if known == now {
                return Ok(false);
            }
        }
        self.log(format_args!(
            "object {}: changed since it was stored (or unknown): replaced by a verified copy",
            hex::encode(sha)
        ));
        let tmp = object.with_extension("new");
        let _ = fs::remove_file(&tmp);
        fs::hard_link(path, &tmp)?;
        fs::rename(&tmp, &object)?;
        Ok(true)
    }

    /// Stores an empty file of a new batch at once: the empty object, its record, markers,
    /// publication.
    pub(super) fn store_empty(
        &self,
        fid: Uuid,
        file: u32,
        spec: &FileSpec,
        tags: &[String],
        uid: u32,
        now: u64,
    ) -> io::Result<Record> {
        let object = self.object_path(&EMPTY_SHA256);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .custom_flags(libc::O_CLOEXEC)
            .open(&object)
        {
            Ok(f) => {
                f.sync_all()?;
                disk::sync_dir(&self.objects_dir())?;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let xxh = twox_hash::XxHash64::oneshot(0, b"");
        let (record, registration) = self.commit_record(
            fid,
            file,
            spec,
            tags,
            uid,
            EMPTY_SHA256,
            Some(xxh),
            now,
            true,
        )?;
        self.register_published(registration);
        Ok(record)
    }

    /// Writes the record of a file whose object exists, then its markers, makes it visible,
    /// then publishes it when it is `public` (spec 7.2's order). The ledger is the caller's.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn commit_record(
        &self,
        fid: Uuid,
        file: u32,
        spec: &FileSpec,
        tags: &[String],
        uid: u32,
        sha: [u8; 32],
        xxh: Option<u64>,
        now: u64,
        publish: bool,
    ) -> io::Result<(Record, Option<Registration>)> {
        let mut record = Record {
            id: store_id(&fid, u64::from(file)),
            owner: uid,
            name: spec.name.clone(),
            size: spec.size,
            sha256: sha,
            tags: tags.to_vec(),
            fid,
            file,
            created: now,
            published: None,
        };
        self.write_record(&record)?;
        let registration = self.finish_record(&mut record, xxh, publish)?;
        Ok((record, registration))
    }

    /// What follows a durable record: its markers, the object's stamp, visibility, then
    /// publication when `public` (the catalog registration is returned for the caller).
    fn finish_record(
        &self,
        record: &mut Record,
        xxh: Option<u64>,
        publish: bool,
    ) -> io::Result<Option<Registration>> {
        self.write_markers(record);
        let stamp = fs::metadata(self.object_path(&record.sha256)).map(|m| ObjectStamp::of(&m));
        if let Ok(stamp) = stamp {
            lock(&self.objects).insert(record.sha256, stamp);
        }
        self.register(record);
        let mut registration = None;
        if publish && record.tags.iter().any(|t| t == PUBLIC) {
            registration = self.publish(record, xxh);
        }
        stamp.map(|_| registration)
    }

    pub(super) fn write_record(&self, r: &Record) -> io::Result<()> {
        self.write_record_unsynced(r)?;
        disk::sync_dir(&self.records_dir())
    }

    fn write_record_unsynced(&self, r: &Record) -> io::Result<()> {
        let mut json = Vec::new();
        r.encode(&mut json);
        disk::write_atomic_unsynced(&self.records_dir(), &format!("{}.json", r.id), &json)
    }

    /// `by-owner/<uid>/<id>` and `by-tag/<tag>/<id>` (derived data: errors are logged).
    pub(super) fn write_markers(&self, r: &Record) {
        let id = r.id.to_string();
        let mut dirs = vec![self.dir.join("by-owner").join(r.owner.to_string())];
        for t in &r.tags {
            dirs.push(self.dir.join("by-tag").join(t));
        }
        for d in dirs {
            if let Err(e) = disk::ensure_dir(&d).and_then(|()| disk::touch(&d.join(&id))) {
                self.log(format_args!("marker {}: {e}", d.join(&id).display()));
            }
        }
    }

    /// Makes a record visible to QUERY and FETCH.
    pub(super) fn register(&self, r: &Record) {
        self.index
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(Entry {
                id: r.id,
                owner: Some(r.owner),
                name: r.name.clone(),
                size: r.size,
                sha256: r.sha256,
                tags: r.tags.clone(),
            });
        self.records
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(r.id, r.clone());
    }

    /// Publishes a `public` record into the served folder (spec 7.3): a hard link to its object
    /// under its name, or `<stem>.<8 hex>.<ext>` when the name holds other content; a name
    /// holding the same content needs nothing. Registers the file with the catalog and keeps
    /// the published name in the record. Not published when both names are taken (logged).
    /// The catalog registration is returned, for the caller to make once the inode is settled.
    pub(super) fn publish(&self, record: &mut Record, xxh: Option<u64>) -> Option<Registration> {
        let sha = record.sha256;
        let object = self.object_path(&sha);
        let mut candidates = vec![record.name.clone()];
        let tagged = tagged_name(&record.name, &hex::encode(&sha[..4]));
        if tagged.len() <= MAX_NAME {
            candidates.push(tagged);
        }
        for name in candidates {
            let dest = self.root.join(&name);
            let fresh = {
                let mut p = lock(&self.published);
                let fresh = !p.contains_key(&name);
                p.entry(name.clone()).or_insert(sha);
                fresh
            };
            self.published_generation.fetch_add(1, Ordering::SeqCst);
            let placed = match fs::hard_link(&object, &dest) {
                Ok(()) => disk::sync_dir(&self.root).map(|()| true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    holds_content(self.catalog.root_dir(), &name, &object, record.size, &sha)
                }
                // Another file system or no links allowed: a copy through ingest.
                Err(_) => self.publish_copy(&object, &name, sha).map(|n| n == name),
            };
            match placed {
                Ok(true) => {
                    let path = self.catalog.root().join(&name);
                    record.published = Some(name);
                    if let Err(e) = self.write_record(record) {
                        self.log(format_args!("record {}: {e}", record.id));
                    }
                    self.records
                        .write()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(record.id, record.clone());
                    return Some(Registration { path, xxh, sha });
                }
                Ok(false) | Err(_) => {
                    if fresh {
                        lock(&self.published).remove(&name);
                        self.published_generation.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }
        eprintln!(
            "filestorage: {} ({}) not published: its names are taken by other files; it stays \
             available through FETCH",
            record.name, record.id
        );
        None
    }

    /// Registers a published file with the catalog without a rescan (with the hashes when known;
    /// without xxHash64 the catalog hashes the file itself).
    pub(super) fn register_published(&self, r: Option<Registration>) {
        let Some(r) = r else {
            return;
        };
        let added = match r.xxh {
            Some(x) => self.catalog.add_ingested_file(&r.path, x, r.sha),
            None => self.catalog.add_file(&r.path),
        };
        if let Err(e) = added {
            self.log(format_args!("catalog: {}: {e}", r.path.display()));
        }
    }

    /// The copy fallback of publication, through ingest (verified, no-overwrite rename).
    fn publish_copy(&self, object: &Path, name: &str, sha: [u8; 32]) -> io::Result<String> {
        let mut src = File::open(object)?;
        let mut sink = self.ingest.begin_stream(Some(src.metadata()?.len()))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = std::io::Read::read(&mut src, &mut buf)?;
            if n == 0 {
                break;
            }
            sink.write_all(&buf[..n])?;
        }
        let publisher = Publisher::without_catalog(self.ingest.clone());
        let p = publisher
            .publish_stream(sink, name, Expect::Sha256(sha), Collision::Tagged)
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(p.committed.name)
    }
}

fn invalidate_hash(g: &mut PartialInner, file: u32) {
    if let Some(h) = g.hashes.get_mut(file as usize) {
        *h = None;
    }
}

/// Whether `name` in the served folder already holds the object's content: the object itself
/// (same inode), or a regular file of the same size and SHA-256. Opened through the folder's
/// descriptor `O_NOFOLLOW | O_NONBLOCK` and checked on the descriptor, so a link or a FIFO
/// swapped in there is neither followed nor waited on (issue 15 items 2 and 7).
fn holds_content(
    root: &crate::dir::Dir,
    name: &str,
    object: &Path,
    size: u64,
    sha: &[u8; 32],
) -> io::Result<bool> {
    let f = match root.open_read(std::ffi::OsStr::new(name)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => return Ok(false),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(false),
        Err(e) => return Err(e),
    };
    let m = f.metadata()?;
    if m.len() != size {
        return Ok(false);
    }
    let o = fs::metadata(object)?;
    if (m.dev(), m.ino()) == (o.dev(), o.ino()) {
        return Ok(true);
    }
    let mut h = FileHash::new(false);
    h.read_from(&f, size)?;
    Ok(&h.finish().0 == sha)
}
