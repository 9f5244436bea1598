//! Streaming ingest: one exclusive temporary, written front to back through a fixed buffer with
//! running SHA-256 and xxHash64, verified and published at the end, removed on any other end.
//!
//! An announced size is never taken on trust: the space is checked against what the file system
//! has free (ENOSPC before any byte), then preallocated a step ([`PREALLOCATE_STEP`]) at a time
//! as the bytes arrive, so a peer that declares 64 GiB and sends nothing holds one step of disk.
//!
//! A file that fits the buffer and was not preallocated never needs its temporary if the same
//! bytes are already under its final name: the temporary is created at the first flush, and
//! `commit` first compares the buffer with the existing file. Receiving files that are already
//! there (a repeated `jtp get`) then costs one open and read of each instead of a temporary
//! written, renamed, compared and removed.

use std::ffi::OsString;
use std::fs::File;
use std::hash::Hasher;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use twox_hash::XxHash64;

use super::ledger::Reservation;
use super::publish::{holds_bytes, publish};
use super::{check, is_plain_name, next_temp_name, os, tag_for, Outcome, Reserve};
use super::{Collision, Committed, Expect, IngestDir, IngestError};

/// Size of the write buffer: large enough that small network reads become large writes.
const BUFFER_BYTES: usize = 256 * 1024;
/// Files smaller than this are not preallocated.
const MIN_PREALLOCATE: u64 = 1024 * 1024;
/// Pieces at least this large skip the buffer.
const DIRECT_WRITE_BYTES: usize = 64 * 1024;
/// Preallocation runs this far ahead of the bytes written, never further than the announced size
/// (the ledger's step).
#[cfg(test)]
const PREALLOCATE_STEP: u64 = super::ledger::STEP;

/// Retries on a taken temporary name (another process, a stale leftover, a planted link)
/// before giving up with `AlreadyExists`.
const TEMP_RETRIES: u32 = 16;

/// A file being received front to back. Dropping it without [`commit`](Self::commit) removes the
/// temporary.
pub struct StreamSink {
    dir: IngestDir,
    /// The temporary's path (for messages), once created (at the first flush, or at once when
    /// preallocated).
    path: Option<PathBuf>,
    /// The temporary's name in the working folder.
    temp: Option<OsString>,
    /// None before the temporary exists and once committed (then it is published or gone).
    file: Option<File>,
    buf: Vec<u8>,
    /// None for sinks that compute only xxHash64 ([`IngestDir::begin_stream_xxh64`]).
    sha: Option<Sha256>,
    xxh: XxHash64,
    written: u64,
    /// Bytes of `written` that reached the file (the rest is in `buf`).
    flushed: u64,
    /// File length set by fallocate; trimmed back to `written` at commit.
    allocated: u64,
    /// The space this stream takes, step by step, when its size was announced (see
    /// [`super::ledger`]); every byte reaches the file within it.
    reservation: Option<Reservation>,
    /// Steps are preallocated (not on tmpfs, not for small files, and while fallocate works).
    preallocates: bool,
    /// A write failed: the file no longer matches the hashes, so it can only be aborted.
    failed: bool,
}

impl StreamSink {
    pub(super) fn create(
        dir: IngestDir,
        size_hint: Option<u64>,
        with_sha256: bool,
    ) -> io::Result<StreamSink> {
        let mut sink = StreamSink {
            dir,
            path: None,
            temp: None,
            file: None,
            buf: Vec::new(),
            sha: with_sha256.then(Sha256::new),
            xxh: XxHash64::with_seed(0),
            written: 0,
            flushed: 0,
            allocated: 0,
            reservation: None,
            preallocates: false,
            failed: false,
        };
        // An announced size is admitted by the ledger at once (ENOSPC before any byte), then
        // taken a step at a time as the data comes, never all at once. Large files get their
        // temporary and their first step now; small ones are not worth a fallocate(2) (it
        // costs as much as their write), and on tmpfs steps are only checked (preallocating
        // there clears RAM pages that the writes overwrite anyway).
        if let Some(len) = size_hint {
            sink.reservation = Some(sink.dir.reserve_space(len)?);
            sink.preallocates =
                len >= MIN_PREALLOCATE && sink.dir.reserve_kind() == Reserve::Preallocate;
            if len >= MIN_PREALLOCATE {
                // On error the sink is dropped, which removes the temporary.
                sink.make_room(1)?;
            }
        }
        let cap = size_hint.map_or(BUFFER_BYTES, |n| n.min(BUFFER_BYTES as u64) as usize);
        sink.buf = Vec::with_capacity(cap);
        Ok(sink)
    }

    /// Makes sure the file may grow to `end` bytes: takes the next step from the ledger when
    /// needed and preallocates it. `ENOSPC` (or `EDQUOT`) when the step does not fit.
    fn make_room(&mut self, end: u64) -> io::Result<()> {
        let Some(r) = self.reservation.as_mut() else {
            return Ok(());
        };
        if end <= r.granted() {
            return Ok(());
        }
        let dir = &self.dir;
        r.ensure(end, || dir.free_for_ledger())?;
        if !self.preallocates {
            return Ok(());
        }
        let to = r.granted();
        let from = self.allocated;
        self.create_temp()?;
        let file = self.file.as_ref().ok_or_else(gone)?;
        if preallocate_range(file, from, to - from)? {
            self.allocated = to;
            if let Some(r) = self.reservation.as_mut() {
                r.allocated(to);
            }
        } else {
            // The file system cannot preallocate: the steps are only checked from now on.
            self.preallocates = false;
        }
        Ok(())
    }

    /// Writes `data` at the end of the file, within the reservation.
    fn write_file(&mut self, data: &[u8]) -> io::Result<()> {
        let end = self.flushed + data.len() as u64;
        self.make_room(end)?;
        self.create_temp()?;
        self.file.as_mut().ok_or_else(gone)?.write_all(data)?;
        self.flushed = end;
        if let Some(r) = self.reservation.as_mut() {
            r.wrote(data.len() as u64);
        }
        Ok(())
    }

    /// Creates the exclusive temporary in the working folder (`O_CREAT | O_EXCL | O_NOFOLLOW`
    /// relative to its descriptor) on a name unique within the process; another process (or a
    /// stale leftover, or a planted link) holding the same name only costs a retry. Mode 0666
    /// less the umask, since the temporary becomes the final file.
    fn create_temp(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            let (name, file) =
                self.dir
                    .work_dir()
                    .create_first_free(0o666, 1 + TEMP_RETRIES, || {
                        OsString::from(next_temp_name())
                    })?;
            self.path = Some(self.dir.work().join(&name));
            self.temp = Some(name);
            self.file = Some(file);
        }
        Ok(self.file.as_mut().expect("just created"))
    }

    /// Appends `data` (buffered; hashes are updated at once). After an error the sink can only
    /// be aborted: `commit` refuses it.
    pub fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        let r = self.append(data);
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("ingest: an earlier write failed"));
        }
        if let Some(sha) = self.sha.as_mut() {
            sha.update(data);
        }
        self.xxh.write(data);
        self.written += data.len() as u64;
        // Large pieces go straight to the file: copying them into the buffer first would cost
        // a memcpy per byte for nothing. Until the temporary exists, whatever fits is kept, so
        // a file already present under its final name never needs one.
        let fits = self.buf.len() + data.len() <= BUFFER_BYTES;
        if fits && (data.len() < DIRECT_WRITE_BYTES || self.file.is_none()) {
            self.buf.extend_from_slice(data);
            return Ok(());
        }
        self.flush_buf()?;
        if data.len() >= DIRECT_WRITE_BYTES {
            self.write_file(data)
        } else {
            self.buf.extend_from_slice(data);
            Ok(())
        }
    }

    /// Bytes accepted so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// SHA-256 of the bytes so far; None for an xxHash64-only sink.
    pub fn sha256(&self) -> Option<[u8; 32]> {
        self.sha.as_ref().map(|s| s.clone().finalize().into())
    }

    /// xxHash64 (seed 0) of the bytes so far.
    pub fn xxh64(&self) -> u64 {
        self.xxh.finish()
    }

    /// Verify against `expect` (mismatch -> IngestError::Mismatch, temp removed), fsync, then publish
    /// under `name` (already sanitised), never replacing a file (module doc). Returns where it
    /// landed.
    ///
    /// Any error removes the temporary: a stream cannot be resumed.
    pub fn commit(self, name: &str, expect: Expect) -> Result<Committed, IngestError> {
        self.commit_with(name, expect, Collision::Tagged)
    }

    /// [`commit`](Self::commit) with an explicit policy for names taken by different content
    /// (TEJ uses [`Collision::Numbered`]).
    pub fn commit_with(
        mut self,
        name: &str,
        expect: Expect,
        policy: Collision,
    ) -> Result<Committed, IngestError> {
        if self.failed {
            return Err(IngestError::Io(io::Error::other(
                "ingest: an earlier write failed",
            )));
        }
        if !is_plain_name(name) {
            return Err(IngestError::BadName);
        }
        let sha256 = self.sha256();
        let xxh64 = self.xxh64();
        if let Some(e) = check(expect, sha256.as_ref(), xxh64) {
            return Err(e);
        }
        // Everything is still in the buffer: the same bytes under the final name need no
        // temporary at all.
        if self.file.is_none() && holds_bytes(self.dir.dest_dir(), os(name), &self.buf)? {
            return Ok(Committed {
                path: self.dir.dest().join(name),
                name: name.to_owned(),
                sha256,
                xxh64,
                size: self.written,
                outcome: Outcome::AlreadyPresent,
                inode: None,
            });
        }
        if self.file.is_none() {
            // An empty file has nothing to flush: create its temporary here.
            self.create_temp()?;
        }
        self.flush_buf()?;
        let file = self.file.as_ref().ok_or_else(gone)?;
        if self.allocated > self.written {
            file.set_len(self.written)?;
        }
        if self.dir.is_durable() {
            file.sync_all()?;
        }
        let inode = super::inode_of(file)?;
        let tag = tag_for(expect, sha256.as_ref(), xxh64);
        let temp = self.temp.clone().ok_or_else(gone)?;
        let p = publish(
            self.dir.dest_dir(),
            self.dir.work_dir(),
            &temp,
            name,
            self.written,
            sha256.as_ref(),
            &tag,
            policy,
        )?;
        // Published or dropped: either way the temporary is no longer ours to remove, and
        // what it still had promised goes back to the ledger.
        self.file = None;
        self.reservation = None;
        if self.dir.is_durable() && p.outcome != Outcome::AlreadyPresent {
            self.dir.dest_dir().sync()?;
        }
        Ok(Committed {
            path: p.path,
            name: p.name,
            sha256,
            xxh64,
            size: self.written,
            outcome: p.outcome,
            inode: (p.outcome != Outcome::AlreadyPresent).then_some(inode),
        })
    }

    /// Removes the temporary. Dropping without commit does the same.
    pub fn abort(self) {}

    fn flush_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let r = self.write_file(&buf);
        self.buf = buf;
        self.buf.clear();
        r
    }
}

impl std::fmt::Debug for StreamSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSink")
            .field("path", &self.path)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl Drop for StreamSink {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            if let Some(t) = &self.temp {
                let _ = self.dir.work_dir().remove_file(t);
            }
        }
    }
}

fn gone() -> io::Error {
    io::Error::other("ingest: stream already finished")
}

/// Reserves bytes `offset..offset + len` of `file` (its length grows to cover them). False where
/// the file system cannot preallocate; `ENOSPC` and other errors are returned.
pub(super) fn preallocate_range(file: &File, offset: u64, len: u64) -> io::Result<bool> {
    if len == 0 {
        return Ok(true);
    }
    let (Ok(off), Ok(off_len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EFBIG));
    };
    if off.checked_add(off_len).is_none() {
        return Err(io::Error::from_raw_os_error(libc::EFBIG));
    }
    loop {
        // SAFETY: fallocate only acts on the descriptor, which `file` keeps open for the call.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, off, off_len) };
        if r == 0 {
            return Ok(true);
        }
        match after_failed_fallocate(io::Error::last_os_error()) {
            Fallocated::Retry => continue,
            Fallocated::Unsupported => return Ok(false),
            Fallocated::Failed(e) => return Err(e),
        }
    }
}

/// What a failed `fallocate(2)` means for [`preallocate_range`].
#[derive(Debug)]
enum Fallocated {
    /// Interrupted by a signal: call it again.
    Retry,
    /// The file system cannot preallocate: go on without.
    Unsupported,
    Failed(io::Error),
}

fn after_failed_fallocate(e: io::Error) -> Fallocated {
    match e.raw_os_error() {
        Some(libc::EINTR) => Fallocated::Retry,
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Fallocated::Unsupported,
        _ => Fallocated::Failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_dir::{list, tmpfs_for, TempDir};
    use super::super::Outcome;
    use super::*;
    use std::fs;
    use std::os::unix::ffi::OsStrExt;

    fn sha(data: &[u8]) -> [u8; 32] {
        Sha256::digest(data).into()
    }

    /// The `n` temporary names this process will try next (the counter moves on by one).
    fn next_temp_names(n: u64) -> Vec<String> {
        let last = super::super::next_temp_name();
        let (stem, k) = last
            .strip_suffix(".part")
            .unwrap()
            .rsplit_once('-')
            .unwrap();
        let k: u64 = k.parse().unwrap();
        (k + 1..=k + n)
            .map(|i| format!("{stem}-{i}.part"))
            .collect()
    }

    #[test]
    fn commit_success() {
        let t = TempDir::new("stream-ok");
        let dir = IngestDir::new(&t.0, &t.0).unwrap();
        let mut s = dir.begin_stream(Some(11)).unwrap();
        s.write_all(b"hello ").unwrap();
        s.write_all(b"world").unwrap();
        assert_eq!(s.written(), 11);
        assert_eq!(s.xxh64(), XxHash64::oneshot(0, b"hello world"));
        let c = s
            .commit("hi.txt", Expect::Sha256(sha(b"hello world")))
            .unwrap();
        assert_eq!(c.outcome, Outcome::Created);
        assert_eq!(c.name, "hi.txt");
        assert_eq!(c.path, t.0.join("hi.txt"));
        assert_eq!(c.size, 11);
        assert_eq!(c.sha256, Some(sha(b"hello world")));
        assert_eq!(fs::read(&c.path).unwrap(), b"hello world");
        assert_eq!(list(&t.0), ["hi.txt"]);
    }

    /// A durable commit that renames a file into the folder fsyncs the folder (the name would
    /// not survive a power cut otherwise); one that finds the bytes already there, or a folder
    /// that is not durable, does not (mutation sample H: `!=` as `==` synced only when nothing
    /// was renamed; `&&` as `||` synced in both other cases).
    #[test]
    fn a_durable_commit_syncs_the_folder_it_renamed_into_and_only_then() {
        use crate::dir::SYNCED;
        use std::os::unix::fs::MetadataExt;
        let t = TempDir::new("stream-sync");
        let work = t.0.join(".ferry/ingest");
        let mut dir = IngestDir::new(&t.0, &work).unwrap();
        let dest = fs::metadata(&t.0).unwrap().ino();
        let commit = |dir: &IngestDir, name: &str| {
            SYNCED.with(|s| s.borrow_mut().clear());
            let mut s = dir.begin_stream(None).unwrap();
            s.write_all(b"abc").unwrap();
            let c = s
                .commit(name, Expect::Xxh64(XxHash64::oneshot(0, b"abc")))
                .unwrap();
            (
                c.outcome,
                SYNCED.with(|s| s.borrow().contains(&dest)),
                c.inode,
            )
        };
        let ino = |name: &str| {
            let m = fs::metadata(t.0.join(name)).unwrap();
            Some((m.dev(), m.ino()))
        };
        let created = commit(&dir, "a.bin");
        assert_eq!(created, (Outcome::Created, true, ino("a.bin")));
        // Nothing renamed: no inode of ours to register (mutation sample H: `!=` as `==`
        // gave the inode of the removed temporary, and none for a created file).
        assert_eq!(
            commit(&dir, "a.bin"),
            (Outcome::AlreadyPresent, false, None)
        );
        dir.set_durable(false);
        assert_eq!(
            commit(&dir, "b.bin"),
            (Outcome::Created, false, ino("b.bin"))
        );
    }

    /// A sink's Debug names it, its temporary and its count, never its buffered bytes
    /// (mutation shard 12/40: an empty `fmt` stayed green).
    #[test]
    fn debug_shows_the_temporary_and_the_count_not_the_bytes() {
        let t = TempDir::new("stream-debug");
        let dir = IngestDir::new(&t.0, &t.0).unwrap();
        let mut s = dir.begin_stream(None).unwrap();
        s.write_all(b"secret").unwrap();
        let d = format!("{s:?}");
        assert!(
            d.starts_with("StreamSink {") && d.contains("written: 6"),
            "{d}"
        );
        assert!(!d.contains("secret") && !d.contains("115, 101"), "{d}");
    }

    #[test]
    fn commit_with_xxh64_and_separate_work_dir() {
        let t = TempDir::new("stream-work");
        let work = t.0.join(".ferry/ingest");
        let dir = IngestDir::new(&t.0, &work).unwrap();
        let mut s = dir.begin_stream(None).unwrap();
        s.write_all(b"abc").unwrap();
        // A small file stays in the buffer: its temporary is made at commit.
        assert_eq!(list(&work), Vec::<String>::new());
        let c = s
            .commit("a.bin", Expect::Xxh64(XxHash64::oneshot(0, b"abc")))
            .unwrap();
        assert_eq!(c.outcome, Outcome::Created);
        assert_eq!(list(&work), Vec::<String>::new());
        assert_eq!(fs::read(t.0.join("a.bin")).unwrap(), b"abc");
    }

    #[test]
    fn mismatch_leaves_nothing() {
        let t = TempDir::new("stream-bad");
        let dir = IngestDir::new(&t.0, &t.0).unwrap();
        let mut s = dir.begin_stream(Some(3)).unwrap();
        s.write_all(b"abc").unwrap();
        let e = s.commit("a.bin", Expect::Xxh64(0x1234)).unwrap_err();
        match e {
            IngestError::Mismatch { expected, actual } => {
                assert_eq!(expected, "0000000000001234");
                assert_eq!(actual, format!("{:016x}", XxHash64::oneshot(0, b"abc")));
            }
            other => panic!("{other}"),
        }
        assert_eq!(list(&t.0), Vec::<String>::new());
        let mut s = dir.begin_stream(None).unwrap();
        s.write_all(b"abc").unwrap();
        let e = s.commit("a.bin", Expect::Sha256([0; 32])).unwrap_err();
        assert!(matches!(e, IngestError::Mismatch { .. }));
        assert_eq!(list(&t.0), Vec::<String>::new());
    }

    /// Another process (or a planted link) on the temporary's name costs a retry, not the
    /// upload, and what is there is left alone.
    #[test]
    fn temporary_names_already_taken_cost_a_retry() {
        let t = TempDir::new("stream-taken");
        let dir = IngestDir::new(&t.0, &t.0).unwrap();
        // The next names this process will try: taken. (Sinks of tests running alongside may
        // use some of them first; the ones left still collide.)
        let taken = next_temp_names(15);
        for name in &taken {
            fs::write(t.0.join(name), b"theirs").unwrap();
        }
        let mut s = dir.begin_stream(Some(1 << 20)).unwrap();
        s.write_all(&[7; 1000]).unwrap();
        let c = s.commit("mine.bin", Expect::Nothing).unwrap();
        assert_eq!(fs::read(&c.path).unwrap(), [7; 1000]);
        for name in &taken {
            assert_eq!(fs::read(t.0.join(name)).unwrap(), b"theirs", "{name}");
        }
    }

    /// The retries on taken names are bounded: with every next name taken, making the
    /// temporary fails with `AlreadyExists` after 16 retries instead of walking the names for as long as they
    /// are taken (mutation sample E: `&&` as `||` retried every AlreadyExists, and so stayed
    /// green in the test above).
    #[test]
    fn retries_on_taken_temporary_names_are_bounded() {
        let t = TempDir::new("stream-all-taken");
        let dir = IngestDir::new(&t.0, &t.0).unwrap();
        // Far more than twice 17 names: sinks of tests running alongside take some first.
        for name in next_temp_names(1000) {
            fs::write(t.0.join(name), b"").unwrap();
        }
        // A sink told its size makes its temporary at once; one that is not, at its first
        // large write.
        let e = dir.begin_stream(Some(1 << 20)).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
        let mut s = dir.begin_stream(None).unwrap();
        let e = s.write_all(&vec![7; 4 << 20]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
        assert_eq!(list(&t.0).len(), 1000);
    }

    /// Pieces under [`DIRECT_WRITE_BYTES`] are gathered in the buffer even once the temporary
    /// exists (small network reads become large writes); larger ones go straight to the file,
    /// after what the buffer held (whole run, ingest stream part: the threshold as 0 or 1,088
    /// bytes, or `<` as `==` or `>`, wrote every small piece with its own system call).
    #[test]
    fn small_pieces_are_gathered_large_ones_written_through() {
        let t = TempDir::new("stream-buffered");
        let dir = IngestDir::new(&t.0, &t.0).unwrap();
        let data: Vec<u8> = (0..500_000u32).map(|i| (i * 13 + i / 509) as u8).collect();
        let mut s = dir.begin_stream(None).unwrap();
        let on_disk = |s: &StreamSink| fs::metadata(s.path.as_ref().unwrap()).unwrap().len();
        // Past the buffer: the temporary is made and the piece written through.
        s.write_all(&data[..300_000]).unwrap();
        assert_eq!(on_disk(&s), 300_000);
        // Small pieces wait in the buffer, together.
        s.write_all(&data[300_000..302_000]).unwrap();
        s.write_all(&data[302_000..304_000]).unwrap();
        assert_eq!(on_disk(&s), 300_000);
        // A large one goes after them, straight to the file.
        s.write_all(&data[304_000..404_000]).unwrap();
        assert_eq!(on_disk(&s), 404_000);
        s.write_all(&data[404_000..]).unwrap();
        let c = s.commit("b.bin", Expect::Sha256(sha(&data))).unwrap();
        assert_eq!(fs::read(&c.path).unwrap(), data);
    }

    /// A failed fallocate is retried when a signal interrupted it, skipped where the file
    /// system cannot preallocate, and an error otherwise (whole run, ingest stream part: either
    /// arm deleted made an interrupted or unsupported preallocation fail the upload; no file
    /// system a test can write here lacks fallocate, so the mapping is tested alone).
    #[test]
    fn a_failed_fallocate_is_retried_skipped_or_an_error() {
        let of = |errno| after_failed_fallocate(io::Error::from_raw_os_error(errno));
        assert!(matches!(of(libc::EINTR), Fallocated::Retry));
        assert!(matches!(of(libc::EOPNOTSUPP), Fallocated::Unsupported));
        assert!(matches!(of(libc::ENOSYS), Fallocated::Unsupported));
        for errno in [libc::ENOSPC, libc::EFBIG, libc::EIO, libc::EBADF] {
            match of(errno) {
                Fallocated::Failed(e) => assert_eq!(e.raw_os_error(), Some(errno)),
                other => panic!("{errno}: {other:?}"),
            }
        }
    }

    #[test]
    fn drop_and_abort_leave_nothing() {
        let t = TempDir::new("stream-drop");
        let dir = IngestDir::new(&t.0, &t.0).unwrap();
        let mut s = dir.begin_stream(Some(1 << 20)).unwrap();
        s.write_all(&[7; 1000]).unwrap();
        assert_eq!(list(&t.0).len(), 1);
        assert!(list(&t.0)[0].starts_with(".ferry-"));
        drop(s);
        assert_eq!(list(&t.0), Vec::<String>::new());
        let s = dir.begin_stream(None).unwrap();
        s.abort();
        assert_eq!(list(&t.0), Vec::<String>::new());
    }

    #[test]
    fn bad_name_removes_temp() {
        let t = TempDir::new("stream-name");
        let dir = IngestDir::new(&t.0, &t.0).unwrap();
        for name in ["", ".", "..", "a/b", "a\0b"] {
            let s = dir.begin_stream(None).unwrap();
            assert!(matches!(
                s.commit(name, Expect::Nothing),
                Err(IngestError::BadName)
            ));
        }
        assert_eq!(list(&t.0), Vec::<String>::new());
    }

    #[test]
    fn no_clobber() {
        let t = TempDir::new("stream-clobber");
        let dir = IngestDir::new(&t.0, &t.0).unwrap();
        fs::write(t.0.join("x.png"), b"same").unwrap();

        let mut s = dir.begin_stream(None).unwrap();
        s.write_all(b"same").unwrap();
        let c = s.commit("x.png", Expect::Nothing).unwrap();
        assert_eq!(c.outcome, Outcome::AlreadyPresent);
        assert_eq!(c.path, t.0.join("x.png"));
        assert_eq!(list(&t.0), ["x.png"]);

        let mut s = dir.begin_stream(None).unwrap();
        s.write_all(b"different").unwrap();
        let id = XxHash64::oneshot(0, b"different");
        let c = s.commit("x.png", Expect::Xxh64(id)).unwrap();
        assert_eq!(c.outcome, Outcome::Renamed);
        let want = format!("x.{}.png", &format!("{id:016x}")[..8]);
        assert_eq!(c.name, want);
        assert_eq!(fs::read(t.0.join("x.png")).unwrap(), b"same");
        assert_eq!(fs::read(t.0.join(&want)).unwrap(), b"different");

        // Sha256 expectations tag with the SHA-256.
        let mut s = dir.begin_stream(None).unwrap();
        s.write_all(b"third").unwrap();
        let c = s.commit("x.png", Expect::Sha256(sha(b"third"))).unwrap();
        let h = sha(b"third");
        let want = format!("x.{:02x}{:02x}{:02x}{:02x}.png", h[0], h[1], h[2], h[3]);
        assert_eq!(c.name, want);
        assert_eq!(list(&t.0).len(), 3);
    }

    #[test]
    fn large_writes_and_short_hint() {
        let t = TempDir::new("stream-large");
        let dir = IngestDir::new(&t.0, &t.0).unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        // Hint larger than the data: the file is trimmed back at commit.
        let mut s = dir.begin_stream(Some(4_000_000)).unwrap();
        for piece in data.chunks(100_000).chain(std::iter::once(&data[..0])) {
            s.write_all(piece).unwrap();
        }
        s.write_all(&[]).unwrap();
        let c = s.commit("big.bin", Expect::Sha256(sha(&data))).unwrap();
        assert_eq!(fs::read(&c.path).unwrap(), data);
        // Mixed sizes, including writes bigger than the buffer.
        let mut s = dir.begin_stream(Some(10)).unwrap();
        let mut off = 0;
        for (i, len) in [1usize, 300_000, 5, 1_000_000, 262_144].iter().enumerate() {
            s.write_all(&data[off..off + len]).unwrap();
            off += len;
            assert_eq!(s.written(), off as u64, "step {i}");
        }
        let c = s
            .commit("mixed.bin", Expect::Sha256(sha(&data[..off])))
            .unwrap();
        assert_eq!(fs::read(&c.path).unwrap(), &data[..off]);
    }

    #[test]
    fn impossible_preallocation_fails_before_writing() {
        let t = TempDir::new("stream-nospace");
        let dir = IngestDir::new(&t.0, &t.0).unwrap();
        // 2^62 bytes fits no disk; the error comes from begin_stream and nothing is left.
        // A file system without fallocate reserves nothing and so cannot refuse: that is a
        // machine this test cannot check, and it says so (STYLE 28) rather than passing.
        let e = match dir.begin_stream(Some(1 << 62)) {
            Err(e) => e,
            Ok(_) => panic!(
                "{} (f_type {:#x?}) accepted a 2^62-byte preallocation: it cannot preallocate, \
                 so this test cannot run here; point TMPDIR at ext4, xfs, btrfs or tmpfs",
                t.0.display(),
                crate::dir::Dir::open(&t.0).and_then(|d| d.fs_type()).ok()
            ),
        };
        assert!(
            matches!(
                e.raw_os_error(),
                Some(libc::ENOSPC) | Some(libc::EFBIG) | Some(libc::EDQUOT)
            ),
            "{e}"
        );
        assert_eq!(list(&t.0), Vec::<String>::new());
    }

    /// Bytes the file system holds for the only temporary in `dir`.
    fn temp_disk_bytes(dir: &std::path::Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let names = list(dir);
        assert_eq!(names.len(), 1, "{names:?}");
        fs::metadata(dir.join(&names[0])).unwrap().blocks() * 512
    }

    /// Issue 15 item 12: a client preallocated whatever size a hostile peer declared (64 GiB
    /// over TEJ, 4 GiB over JTP) before any byte arrived. Now one step at a time, as bytes come.
    #[test]
    fn preallocation_runs_a_step_ahead_of_the_bytes_never_to_the_declared_size() {
        let t = TempDir::new("stream-steps");
        let dir = IngestDir::new(&t.0, &t.0).unwrap();
        if dir.work_on_tmpfs() {
            panic!("this test needs a temporary folder that is not tmpfs");
        }
        let declared = 4 * PREALLOCATE_STEP;
        let mut s = dir.begin_stream(Some(declared)).unwrap();
        let held = temp_disk_bytes(&t.0);
        assert!(
            held <= PREALLOCATE_STEP,
            "{held} bytes held before any byte arrived"
        );
        // Bytes within the first step take no more; past it, the next step.
        let piece = vec![1u8; 1 << 20];
        for _ in 0..(PREALLOCATE_STEP >> 20) + 1 {
            s.write_all(&piece).unwrap();
        }
        // The next step is preallocated ahead of the bytes, not merely filled by them
        // (mutation sample H: `flushed + len` as `*` never asked for room past the first step;
        // the file then held just its bytes).
        let held = temp_disk_bytes(&t.0);
        assert!(
            (2 * PREALLOCATE_STEP..=2 * PREALLOCATE_STEP + (1 << 20)).contains(&held),
            "{held} bytes held after {} written",
            s.written()
        );
        // Whatever was taken ahead is given back at commit.
        let c = s.commit("steps.bin", Expect::Nothing).unwrap();
        assert_eq!(c.size, PREALLOCATE_STEP + (1 << 20));
        assert_eq!(fs::metadata(&c.path).unwrap().len(), c.size);
        // A declared size the file system cannot hold is refused before any byte.
        let free = dir.available_bytes().unwrap();
        let e = dir.begin_stream(Some(free + (1 << 40))).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
        assert_eq!(list(&t.0), ["steps.bin"]);
    }

    #[test]
    fn on_tmpfs_space_is_checked_not_preallocated() {
        let Some(shm) =
            tmpfs_for("ingest::stream::tests::on_tmpfs_space_is_checked_not_preallocated")
        else {
            return; // it ran, and passed, on a tmpfs mounted for it
        };
        let t = TempDir(shm.join(format!("ferry-test-ingest-tmpfs-{}", std::process::id())));
        fs::create_dir_all(&t.0).unwrap();
        let dir = IngestDir::new(&t.0, &t.0).unwrap();
        assert!(dir.work_on_tmpfs());
        let e = dir.begin_stream(Some(1 << 62)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
        // A large file that fits: no temporary (nor RAM) taken before the first bytes.
        let mut s = dir.begin_stream(Some(MIN_PREALLOCATE * 4)).unwrap();
        assert_eq!(list(&t.0), Vec::<String>::new());
        let data = vec![7u8; (MIN_PREALLOCATE * 4) as usize];
        s.write_all(&data).unwrap();
        let c = s.commit("big", Expect::Nothing).unwrap();
        assert_eq!(fs::read(c.path).unwrap(), data);
    }

    #[test]
    fn same_bytes_already_there_need_no_temporary() {
        let t = TempDir::new("stream-present");
        let work = t.0.join(".ferry/ingest");
        let dir = IngestDir::new(&t.0, &work).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        fs::write(t.0.join("img.png"), &data).unwrap();
        // One piece over DIRECT_WRITE_BYTES, as a network read gives it.
        let mut s = dir.begin_stream_xxh64(Some(data.len() as u64)).unwrap();
        s.write_all(&data).unwrap();
        assert_eq!(list(&work), Vec::<String>::new());
        let c = s
            .commit("img.png", Expect::Xxh64(XxHash64::oneshot(0, &data)))
            .unwrap();
        assert_eq!(c.outcome, Outcome::AlreadyPresent);
        assert_eq!((c.name.as_str(), c.size), ("img.png", data.len() as u64));
        assert_eq!(list(&work), Vec::<String>::new());
        // The check still comes first: wrong bytes are refused even if the name holds them.
        let mut s = dir.begin_stream(None).unwrap();
        s.write_all(&data).unwrap();
        assert!(matches!(
            s.commit("img.png", Expect::Xxh64(1)),
            Err(IngestError::Mismatch { .. })
        ));
        // Same name, other bytes (one byte differs, or one more byte): tagged copy.
        for other in [
            {
                let mut o = data.clone();
                o[99_999] ^= 1;
                o
            },
            [&data[..], b"!"].concat(),
        ] {
            let mut s = dir.begin_stream(None).unwrap();
            s.write_all(&other).unwrap();
            let c = s.commit("img.png", Expect::Nothing).unwrap();
            assert_eq!(c.outcome, Outcome::Renamed, "{}", c.name);
            assert_eq!(fs::read(&c.path).unwrap(), other);
        }
        assert_eq!(fs::read(t.0.join("img.png")).unwrap(), data);
        // A symlink under the name is never taken for the file.
        std::os::unix::fs::symlink(t.0.join("img.png"), t.0.join("link.png")).unwrap();
        let mut s = dir.begin_stream(None).unwrap();
        s.write_all(&data).unwrap();
        let c = s.commit("link.png", Expect::Nothing).unwrap();
        assert_eq!(c.outcome, Outcome::Renamed);
        // Files larger than the buffer take the temporary path and are still found equal.
        let big: Vec<u8> = (0..BUFFER_BYTES as u32 * 3)
            .map(|i| (i % 253) as u8)
            .collect();
        fs::write(t.0.join("big.bin"), &big).unwrap();
        let mut s = dir.begin_stream(None).unwrap();
        s.write_all(&big).unwrap();
        let c = s.commit("big.bin", Expect::Nothing).unwrap();
        assert_eq!(c.outcome, Outcome::AlreadyPresent);
        assert_eq!(list(&work), Vec::<String>::new());
    }

    #[test]
    fn holds_bytes_compares_exactly() {
        let t = TempDir::new("stream-holds");
        let d = crate::dir::Dir::open(&t.0).unwrap();
        let data: Vec<u8> = (0..700_000u32).map(|i| (i % 249) as u8).collect();
        let p = t.0.join("f");
        for (on_disk, want) in [
            (&data[..], true),
            (&data[..699_999], false),
            (&[&data[..], b"x"].concat()[..], false),
            (&[], false),
        ] {
            fs::write(&p, on_disk).unwrap();
            assert_eq!(
                holds_bytes(&d, os("f"), &data).unwrap(),
                want,
                "{}",
                on_disk.len()
            );
        }
        fs::write(&p, b"").unwrap();
        assert!(holds_bytes(&d, os("f"), b"").unwrap());
        assert!(!holds_bytes(&d, os("missing"), b"").unwrap());
        std::fs::create_dir(t.0.join("sub")).unwrap();
        assert!(!holds_bytes(&d, os("sub"), b"").unwrap());
        // A link to identical bytes is not them (it is never followed).
        std::os::unix::fs::symlink("f", t.0.join("link")).unwrap();
        assert!(!holds_bytes(&d, os("link"), b"").unwrap());
        // A FIFO is opened without blocking and not compared (reading it could block or take a
        // writer's data).
        let fifo = std::ffi::CString::new(t.0.join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(!holds_bytes(&d, os("fifo"), b"").unwrap());
    }

    #[test]
    fn temp_names_never_collide() {
        let t = TempDir::new("stream-names");
        let dir = IngestDir::new(&t.0, &t.0).unwrap();
        let other = dir.clone();
        // Temporaries are made lazily; make them now.
        let made = |d: &IngestDir| {
            let mut s = d.begin_stream(None).unwrap();
            s.create_temp().unwrap();
            s
        };
        let mut a = made(&dir);
        let mut b = made(&other);
        assert!(a.path.is_some());
        assert_ne!(a.path, b.path);
        a.write_all(b"a").unwrap();
        b.write_all(b"b").unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let d = dir.clone();
                std::thread::spawn(move || (0..50).map(|_| made(&d)).collect::<Vec<_>>())
            })
            .collect();
        let sinks: Vec<StreamSink> = threads
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        assert_eq!(list(&t.0).len(), 202);
        drop(sinks);
        let ca = a.commit("f", Expect::Nothing).unwrap();
        let cb = b.commit("f", Expect::Nothing).unwrap();
        assert_eq!(ca.outcome, Outcome::Created);
        assert_eq!(cb.outcome, Outcome::Renamed);
        assert_eq!(fs::read(&ca.path).unwrap(), b"a");
        assert_eq!(fs::read(&cb.path).unwrap(), b"b");
    }

    #[test]
    fn empty_stream() {
        let t = TempDir::new("stream-empty");
        let dir = IngestDir::new(&t.0, &t.0).unwrap();
        let s = dir.begin_stream(Some(0)).unwrap();
        let c = s.commit("empty", Expect::Sha256(sha(b""))).unwrap();
        assert_eq!(c.size, 0);
        assert_eq!(fs::read(&c.path).unwrap(), b"");
    }
}
