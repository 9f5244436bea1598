//! One sync at a time per folder: an exclusive `flock(2)` on `DIR/.ferry/sync.lock`, taken
//! without waiting, holding the owner's pid so the run that finds it taken can say whose it is.
//! The kernel drops the lock when its holder exits however it exits, so a killed run never
//! leaves a stale lock behind.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The lock file's name inside the state folder.
pub const LOCK_FILE: &str = "sync.lock";

/// A held lock; dropping it releases it.
#[derive(Debug)]
pub struct SyncLock {
    _file: File,
    path: PathBuf,
}

/// Why the lock was not taken.
#[derive(Debug)]
pub enum LockError {
    /// Another process holds it; its pid as written in the file, if readable.
    Held {
        pid: Option<u32>,
    },
    Io(io::Error),
}

impl SyncLock {
    /// Takes the lock in `state_dir` (created if missing) or fails at once.
    pub fn acquire(state_dir: &Path) -> Result<SyncLock, LockError> {
        std::fs::create_dir_all(state_dir).map_err(LockError::Io)?;
        let path = state_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&path)
            .map_err(LockError::Io)?;
        // SAFETY: flock(2) on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(LockError::Held {
                    pid: text.trim().parse().ok(),
                });
            }
            return Err(LockError::Io(e));
        }
        file.set_len(0).map_err(LockError::Io)?;
        file.rewind().map_err(LockError::Io)?;
        writeln!(file, "{}", std::process::id()).map_err(LockError::Io)?;
        Ok(SyncLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_taker_fails_at_once_and_learns_the_holder_pid() {
        let dir = crate::ingest::test_dir::TempDir::new("sync-lock");
        let first = SyncLock::acquire(&dir.0).expect("first lock");
        // flock locks belong to the open file description: a second open in this process
        // conflicts as a second process would.
        match SyncLock::acquire(&dir.0) {
            Err(LockError::Held { pid }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        let again = SyncLock::acquire(&dir.0).expect("free again after drop");
        assert!(again.path().ends_with(LOCK_FILE));
    }
}
