//! The attic: files `--delete` removed, kept until the end of the next run so that content the
//! source only moved can still be placed without a transfer.
//!
//! Why: a live source publishes a removed name at once but a new name only once it has settled
//! (`catalog::live`), so a run that lists the source in between sees a rename as "deleted" and,
//! one run later, "added". Without the attic the second run would fetch bytes the first one
//! threw away. With it, the deleted file waits in `DIR/.ferry/attic/<sha256 hex>` and the next
//! run moves it back under its new name.
//!
//! ```text
//!   run N: delete NAME --rename--> attic/<sha>  (recorded with its stamp)
//!   run N+1: wanted <sha>? --rename--> held/ --> DIR/NEW      else: removed at the end
//! ```
//!
//! `manifest.json` lists each entry with the hashes the catalog had for it and the stamp (inode,
//! size, mtime) it had when it arrived; an entry whose file no longer matches is dropped, so a
//! file changed inside the attic is never trusted. Out of scope: any limit on the attic's size
//! (it holds what one run deleted, for one run).

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::plan::LocalFile;
use crate::catalog::FileStamp;
use crate::wire::hex;

/// The attic folder inside the state folder.
pub const ATTIC_DIR: &str = "attic";
const MANIFEST: &str = "manifest.json";
/// Largest manifest read (about 1.5 million entries); a larger one is ignored.
const MAX_MANIFEST_BYTES: u64 = 256 << 20;

/// One kept file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Entry {
    sha256: String,
    xxh64: String,
    size: u64,
    ino: u64,
    mtime_ns: i64,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Manifest {
    files: Vec<Entry>,
}

/// The attic of one run.
#[derive(Debug)]
pub struct Attic {
    dir: PathBuf,
    /// Entries kept by earlier runs, checked against their files.
    old: Vec<Entry>,
    /// Entries this run added.
    new: Vec<Entry>,
    /// Keys (sha256 hex) moved out by this run.
    taken: HashSet<String>,
}

fn stamp_of(m: &fs::Metadata) -> (u64, u64, i64) {
    let s = FileStamp::from_metadata(m);
    (s.ino, s.size, i64::try_from(s.mtime_ns).unwrap_or(i64::MAX))
}

impl Attic {
    /// Loads `state_dir/attic`, keeping only entries whose file is still the one recorded.
    /// A missing or unreadable manifest is an empty attic.
    pub fn load(state_dir: &Path) -> Attic {
        let dir = state_dir.join(ATTIC_DIR);
        let manifest = read_manifest(&dir.join(MANIFEST)).unwrap_or_default();
        let mut seen = HashSet::new();
        let old = manifest
            .files
            .into_iter()
            .filter(|e| hex::parse_sha256(&e.sha256).is_some() && seen.insert(e.sha256.clone()))
            .filter(|e| {
                fs::symlink_metadata(dir.join(&e.sha256))
                    .is_ok_and(|m| m.is_file() && stamp_of(&m) == (e.ino, e.size, e.mtime_ns))
            })
            .collect();
        Attic {
            dir,
            old,
            new: Vec::new(),
            taken: HashSet::new(),
        }
    }

    /// What earlier runs kept, as donors for the plan (named by their key).
    pub fn spares(&self) -> Vec<LocalFile> {
        self.old
            .iter()
            .filter_map(|e| {
                Some(LocalFile {
                    name: e.sha256.clone(),
                    size: e.size,
                    sha256: hex::parse_sha256(&e.sha256)?,
                    xxh64: hex::parse_u64(&e.xxh64)?,
                })
            })
            .collect()
    }

    /// Moves kept file `key` to `to`, checking it is still the recorded file.
    pub fn take(&mut self, key: &str, to: &Path) -> io::Result<()> {
        let e = self
            .old
            .iter()
            .find(|e| e.sha256 == key)
            .ok_or_else(|| io::Error::other("not in the attic"))?;
        let path = self.dir.join(key);
        let m = fs::symlink_metadata(&path)?;
        if !m.is_file() || stamp_of(&m) != (e.ino, e.size, e.mtime_ns) {
            return Err(io::Error::other("changed in the attic"));
        }
        fs::rename(&path, to)?;
        self.taken.insert(key.to_string());
        Ok(())
    }

    /// Keeps `path` (being deleted from DIR; its content hashes as given) until the end of the
    /// next run; if the attic already holds that content, `path` is simply removed.
    pub fn keep(&mut self, path: &Path, sha256: &[u8; 32], xxh64: u64) -> io::Result<()> {
        let key = hex::encode(sha256);
        if self.new.iter().any(|e| e.sha256 == key) {
            return fs::remove_file(path);
        }
        if !self.taken.contains(&key) {
            if let Some(i) = self.old.iter().position(|e| e.sha256 == key) {
                // Already kept by an earlier run: that copy now lives one more run.
                let e = self.old.remove(i);
                self.new.push(e);
                return fs::remove_file(path);
            }
        }
        fs::create_dir_all(&self.dir)?;
        let to = self.dir.join(&key);
        fs::rename(path, &to)?;
        let m = fs::symlink_metadata(&to)?;
        let (ino, size, mtime_ns) = stamp_of(&m);
        self.old.retain(|e| e.sha256 != key);
        self.new.push(Entry {
            sha256: key,
            xxh64: hex::encode_u64(xxh64),
            size,
            ino,
            mtime_ns,
        });
        Ok(())
    }

    /// Ends the run: entries earlier runs kept and this run did not use are removed, what this
    /// run kept is recorded. Any other file in the attic goes too.
    pub fn finish(self) -> io::Result<()> {
        let keep: HashSet<&str> = self.new.iter().map(|e| e.sha256.as_str()).collect();
        if let Ok(rd) = fs::read_dir(&self.dir) {
            for e in rd.filter_map(Result::ok) {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name != MANIFEST && !keep.contains(name.as_ref()) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        if self.new.is_empty() {
            return match fs::remove_file(self.dir.join(MANIFEST)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        let body = serde_json::to_vec(&Manifest { files: self.new }).map_err(io::Error::other)?;
        // A new temporary, never through a link left there (`O_EXCL | O_NOFOLLOW`).
        let tmp = self.dir.join(format!(".{MANIFEST}.tmp"));
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(&body)?;
        drop(f);
        fs::rename(&tmp, self.dir.join(MANIFEST))
    }
}

fn read_manifest(path: &Path) -> Option<Manifest> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    if f.metadata().ok()?.len() > MAX_MANIFEST_BYTES {
        return None;
    }
    let mut body = Vec::new();
    f.take(MAX_MANIFEST_BYTES).read_to_end(&mut body).ok()?;
    serde_json::from_slice(&body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::test_dir::TempDir;

    fn sha(b: u8) -> [u8; 32] {
        [b; 32]
    }

    #[test]
    fn a_kept_file_is_offered_to_the_next_run_then_removed_after_it() {
        let d = TempDir::new("attic");
        let state = d.0.join(".ferry");
        fs::create_dir_all(&state).unwrap();
        fs::write(d.0.join("old.bin"), b"content").unwrap();

        let mut a = Attic::load(&state);
        assert!(a.spares().is_empty());
        a.keep(&d.0.join("old.bin"), &sha(7), 42).unwrap();
        a.finish().unwrap();
        assert!(!d.0.join("old.bin").exists());

        // The next run sees it and may take it.
        let mut a = Attic::load(&state);
        let spares = a.spares();
        assert_eq!(spares.len(), 1);
        assert_eq!(
            (spares[0].sha256, spares[0].xxh64, spares[0].size),
            (sha(7), 42, 7)
        );
        a.take(&spares[0].name, &d.0.join("new.bin")).unwrap();
        a.finish().unwrap();
        assert_eq!(fs::read(d.0.join("new.bin")).unwrap(), b"content");
        assert!(Attic::load(&state).spares().is_empty());
    }

    #[test]
    fn an_unused_file_lives_one_more_run_only() {
        let d = TempDir::new("attic-prune");
        let state = d.0.join(".ferry");
        fs::write(d.0.join("x"), b"x").unwrap();
        let mut a = Attic::load(&state);
        a.keep(&d.0.join("x"), &sha(1), 1).unwrap();
        a.finish().unwrap();
        let a = Attic::load(&state);
        assert_eq!(a.spares().len(), 1);
        a.finish().unwrap();
        assert!(Attic::load(&state).spares().is_empty());
        let left: Vec<_> = fs::read_dir(state.join(ATTIC_DIR)).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_file_changed_in_the_attic_is_not_trusted() {
        let d = TempDir::new("attic-changed");
        let state = d.0.join(".ferry");
        fs::write(d.0.join("x"), b"x").unwrap();
        let mut a = Attic::load(&state);
        a.keep(&d.0.join("x"), &sha(1), 1).unwrap();
        a.finish().unwrap();
        fs::write(
            state.join(ATTIC_DIR).join(hex::encode(&sha(1))),
            b"other bytes",
        )
        .unwrap();
        assert!(Attic::load(&state).spares().is_empty());
    }

    #[test]
    fn the_same_content_is_kept_once_and_bad_manifests_are_empty_attics() {
        let d = TempDir::new("attic-dup");
        let state = d.0.join(".ferry");
        fs::write(d.0.join("a"), b"same").unwrap();
        fs::write(d.0.join("b"), b"same").unwrap();
        let mut a = Attic::load(&state);
        a.keep(&d.0.join("a"), &sha(3), 3).unwrap();
        a.keep(&d.0.join("b"), &sha(3), 3).unwrap();
        assert!(!d.0.join("b").exists());
        a.finish().unwrap();
        assert_eq!(Attic::load(&state).spares().len(), 1);
        for junk in [&b"not json"[..], b"{\"files\":[{\"sha256\":\"zz\"}]}", b""] {
            fs::write(state.join(ATTIC_DIR).join(MANIFEST), junk).unwrap();
            assert!(Attic::load(&state).spares().is_empty());
        }
    }
}
