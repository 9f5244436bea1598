//! The process-wide ledger of disk space promised to transfers and not yet on disk.
//!
//! `statvfs` tells what a file system has free *now*; it does not know what this process has
//! already promised to uploads still arriving. Every transfer therefore takes its space here
//! (`IngestDir::reserve_space`), whatever the protocol:
//!
//! - a file is admitted when its whole declared size fits the free space minus the space
//!   promised to other transfers on the same file system minus the folder's `disk_reserve`;
//! - it then takes space in steps ([`STEP`] ahead of its write position, never its whole size
//!   at once), each step charged the same way, so a peer that declares 64 GiB and trickles
//!   holds one step, not 64 GiB;
//! - a step is *promised* (counted here) until it is visible in `statvfs`: preallocated with
//!   fallocate(2) (then at once) or written (tmpfs and file systems without fallocate);
//! - an owner (TEJ: the peer's address) may hold at most its cap of space granted and not yet
//!   written, over all its transfers;
//! - whatever is still promised is given back when the reservation drops (commit or abort).
//!
//! ```text
//!   admit(len): free - promised(fs) - reserve >= len ?          else ENOSPC
//!   grow(to):   free - promised(fs) - reserve >= step  and
//!               held(owner) + step <= owner cap ?               else ENOSPC / EDQUOT
//!   0 ......... written ......... allocated ......... granted ......... len
//!               |<- on disk ->|   |<- visible, unwritten ->|<- promised ->|
//!               held(owner) = granted - written;  promised = granted - max(allocated, written)
//! ```
//!
//! Out of scope: space taken by other processes (statvfs sees it when it happens) and the
//! resumable parts' own accounting (they are admitted here, then preallocated or sparse).

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};

/// How far ahead of its write position a transfer takes its space.
pub const STEP: u64 = 64 << 20;

/// Totals over every live reservation of the process.
#[derive(Debug, Default)]
struct Book {
    /// Bytes promised and not yet visible in statvfs, per file system (st_dev).
    promised: HashMap<u64, u64>,
    /// Bytes granted and not yet written, per owner.
    held: HashMap<Arc<str>, u64>,
}

fn book() -> MutexGuard<'static, Book> {
    static BOOK: LazyLock<Mutex<Book>> = LazyLock::new(Mutex::default);
    // Every critical section leaves the book consistent before anything can panic.
    BOOK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Bytes this process promised on file system `dev` and has not written or allocated yet.
pub fn promised(dev: u64) -> u64 {
    book().promised.get(&dev).copied().unwrap_or(0)
}

/// Bytes `owner` holds (granted, not yet written) over all its transfers.
pub fn held_by(owner: &str) -> u64 {
    book().held.get(owner).copied().unwrap_or(0)
}

/// Where a reservation draws from and how much it may take.
#[derive(Debug, Clone)]
pub(crate) struct Account {
    /// File system id (st_dev of the work folder).
    pub dev: u64,
    /// Bytes left free on it for everyone else.
    pub disk_reserve: u64,
    /// Who holds the space, and how much it may hold at once.
    pub owner: Option<(Arc<str>, u64)>,
}

/// One transfer's space: granted in steps, given back as it lands on disk, and whatever is
/// left when it drops.
#[derive(Debug)]
pub(crate) struct Reservation {
    account: Account,
    /// Declared size (a hint: writes past it take more steps).
    len: u64,
    granted: u64,
    allocated: u64,
    written: u64,
}

impl Reservation {
    /// Admits a transfer of `len` bytes when `free` (statvfs now) minus what is promised on the
    /// file system minus the reserve covers it; takes nothing yet.
    pub fn admit(account: Account, len: u64, free: u64) -> io::Result<Reservation> {
        let b = book();
        let promised = b.promised.get(&account.dev).copied().unwrap_or(0);
        if free
            .saturating_sub(promised)
            .saturating_sub(account.disk_reserve)
            < len
        {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(Reservation {
            account,
            len,
            granted: 0,
            allocated: 0,
            written: 0,
        })
    }

    /// Bytes granted so far (from offset 0).
    pub fn granted(&self) -> u64 {
        self.granted
    }

    /// Makes sure bytes up to `end` are granted: if not, grants up to `STEP` past the write
    /// position (at least `end`, at most the declared size unless `end` is past it), charged
    /// against `free()` (statvfs, asked only when a step is needed). `ENOSPC` when the file
    /// system cannot give it, `EDQUOT` when the owner already holds its cap.
    pub fn ensure(&mut self, end: u64, free: impl FnOnce() -> io::Result<u64>) -> io::Result<()> {
        if end <= self.granted {
            return Ok(());
        }
        let cap = self.len.max(end);
        let to = end.max(cap.min(self.written.saturating_add(STEP)));
        // What the step adds to the book: only bytes not already on disk.
        let (p0, h0) = self.counts();
        let old = std::mem::replace(&mut self.granted, to);
        let (p1, h1) = self.counts();
        self.granted = old;
        let (more_promised, more_held) = (p1 - p0, h1 - h0);
        let free = free()?;
        let mut b = book();
        let promised = b.promised.get(&self.account.dev).copied().unwrap_or(0);
        if free
            .saturating_sub(promised)
            .saturating_sub(self.account.disk_reserve)
            < more_promised
        {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        if let Some((owner, max)) = &self.account.owner {
            let held = b.held.get(owner).copied().unwrap_or(0);
            if held.saturating_add(more_held) > *max {
                return Err(io::Error::from_raw_os_error(libc::EDQUOT));
            }
            if more_held > 0 {
                *b.held.entry(owner.clone()).or_insert(0) += more_held;
            }
        }
        if more_promised > 0 {
            *b.promised.entry(self.account.dev).or_insert(0) += more_promised;
        }
        self.granted = to;
        Ok(())
    }

    /// Bytes up to `end` are now allocated on disk (fallocate): no longer promised.
    pub fn allocated(&mut self, end: u64) {
        self.settle(|r| r.allocated = r.allocated.max(end.min(r.granted)));
    }

    /// `n` more bytes reached the file.
    pub fn wrote(&mut self, n: u64) {
        self.settle(|r| r.written = r.written.saturating_add(n));
    }

    /// (promised, held) as this reservation counts them in the book.
    fn counts(&self) -> (u64, u64) {
        let on_disk = self.allocated.max(self.written).min(self.granted);
        (
            self.granted - on_disk,
            self.granted - self.written.min(self.granted),
        )
    }

    fn settle(&mut self, change: impl FnOnce(&mut Reservation)) {
        let (p0, h0) = self.counts();
        change(self);
        let (p1, h1) = self.counts();
        if (p0, h0) != (p1, h1) {
            let mut b = book();
            take(&mut b.promised, &self.account.dev, p0 - p1.min(p0));
            if let Some((owner, _)) = &self.account.owner {
                take(&mut b.held, owner, h0 - h1.min(h0));
            }
        }
    }
}

/// Takes `n` from `map[key]`, removing the key at zero.
fn take<K: std::hash::Hash + Eq + Clone>(map: &mut HashMap<K, u64>, key: &K, n: u64) {
    if n == 0 {
        return;
    }
    if let Some(v) = map.get_mut(key) {
        *v = v.saturating_sub(n);
        if *v == 0 {
            map.remove(key);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let (p, h) = self.counts();
        let mut b = book();
        take(&mut b.promised, &self.account.dev, p);
        if let Some((owner, _)) = &self.account.owner {
            take(&mut b.held, owner, h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file system id no real folder has, one per test (the book is process-wide).
    fn account(dev: u64, reserve: u64, owner: Option<(&str, u64)>) -> Account {
        Account {
            dev: u64::MAX - dev,
            disk_reserve: reserve,
            owner: owner.map(|(o, m)| (Arc::from(format!("{o}-{dev}").as_str()), m)),
        }
    }

    #[test]
    fn admission_counts_what_others_were_promised_and_the_reserve() {
        let a = account(1, 10, None);
        let dev = a.dev;
        let mut r = Reservation::admit(a.clone(), 50, 100).unwrap();
        r.ensure(50, || Ok(100)).unwrap();
        assert_eq!(promised(dev), 50);
        // 100 free - 50 promised - 10 reserve = 40: 40 fits, 41 does not.
        assert!(Reservation::admit(a.clone(), 40, 100).is_ok());
        let e = Reservation::admit(a.clone(), 41, 100).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        // Written bytes show in statvfs: the promise shrinks as they land.
        r.wrote(30);
        assert_eq!(promised(dev), 20);
        drop(r);
        assert_eq!(promised(dev), 0);
    }

    #[test]
    fn space_is_taken_a_step_ahead_not_the_whole_declared_size() {
        let a = account(2, 0, None);
        let dev = a.dev;
        let len = 10 * STEP;
        let mut r = Reservation::admit(a, len, u64::MAX / 2).unwrap();
        r.ensure(1, || Ok(u64::MAX / 2)).unwrap();
        assert_eq!(r.granted(), STEP);
        assert_eq!(promised(dev), STEP);
        // Preallocated: visible in statvfs, no longer promised.
        r.allocated(STEP);
        assert_eq!(promised(dev), 0);
        r.wrote(STEP - 10);
        r.ensure(STEP + 5, || Ok(u64::MAX / 2)).unwrap();
        assert_eq!(r.granted(), 2 * STEP - 10);
        assert_eq!(promised(dev), STEP - 10);
        // Past the declared size (a hint): still granted.
        r.wrote(len);
        r.ensure(len + STEP + 7, || Ok(u64::MAX / 2)).unwrap();
        assert!(r.granted() >= len + STEP + 7);
        drop(r);
        assert_eq!(promised(dev), 0);
    }

    #[test]
    fn a_step_that_does_not_fit_is_refused_and_takes_nothing() {
        let a = account(3, 5, None);
        let dev = a.dev;
        let mut r = Reservation::admit(a, 3 * STEP, 3 * STEP + 5).unwrap();
        r.ensure(1, || Ok(STEP + 4)).unwrap_err();
        assert_eq!(promised(dev), 0);
        r.ensure(1, || Ok(STEP + 5)).unwrap();
        assert_eq!(promised(dev), STEP);
    }

    #[test]
    fn an_owner_holds_at_most_its_cap_over_all_its_transfers() {
        let a = account(4, 0, Some(("peer", 100)));
        let owner = a.owner.clone().unwrap().0;
        let mut r1 = Reservation::admit(a.clone(), 60, 1 << 40).unwrap();
        r1.ensure(60, || Ok(1 << 40)).unwrap();
        let mut r2 = Reservation::admit(a.clone(), 60, 1 << 40).unwrap();
        let e = r2.ensure(60, || Ok(1 << 40)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EDQUOT));
        assert_eq!(held_by(&owner), 60);
        // Written bytes are no longer held; preallocated ones still are.
        r1.allocated(60);
        assert_eq!(held_by(&owner), 60);
        r1.wrote(30);
        assert_eq!(held_by(&owner), 30);
        r2.ensure(60, || Ok(1 << 40)).unwrap();
        assert_eq!(held_by(&owner), 90);
        drop(r1);
        drop(r2);
        assert_eq!(held_by(&owner), 0);
    }
}
