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
use std::sync::atomic::{AtomicU64, Ordering};
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

    /// Bytes this reservation holds promised in the book (granted, not yet on disk).
    #[cfg(test)]
    pub(crate) fn promised_bytes(&self) -> u64 {
        self.counts().0
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

/// Space of a part that many writers fill in any order (FastDP pushes): a [`Reservation`]
/// counted in bytes of blocks written or being written (the *demand*), not in positions, so a
/// peer that writes its chunks out of order or far apart holds no more than one that writes
/// them in order.
///
/// The hot path is one atomic load and compare per claim ([`charge`](Self::charge)); a step
/// (statvfs, the book's lock, a preallocation) is taken only when the demand passes what was
/// granted, once per [`STEP`] of data.
///
/// ```text
///   demand = bytes of blocks written or claimed (a replaced block is counted once)
///   charge(demand): demand <= limit ? ok : step
///   step: wrote(demand so far) ; ensure(demand) ; preallocate(the new step) ; allocated(st_blocks)
///         limit = base + granted
/// ```
#[derive(Debug)]
pub(crate) struct Stepped {
    /// Demand that may be reached without a step (base + granted).
    limit: AtomicU64,
    slow: Mutex<SteppedInner>,
}

#[derive(Debug)]
struct SteppedInner {
    res: Reservation,
    /// Demand when the part was opened (blocks already held then): the reservation counts
    /// from there.
    base: u64,
    /// Written bytes reported to the reservation.
    reported: u64,
    /// Bytes the file had allocated when it was opened.
    alloc_base: u64,
}

impl Stepped {
    /// Wraps an admitted reservation of a part whose held blocks make `base` bytes and whose
    /// file has `alloc_base` bytes allocated.
    pub fn new(res: Reservation, base: u64, alloc_base: u64) -> Stepped {
        Stepped {
            limit: AtomicU64::new(base),
            slow: Mutex::new(SteppedInner {
                res,
                base,
                reported: 0,
                alloc_base,
            }),
        }
    }

    /// Makes sure a demand of `demand` bytes (this claim's `bytes` included) is granted.
    /// `free` is asked only for a step; `step(len)` preallocates the new step (`len` bytes
    /// from where the claim writes) and returns the bytes the file has allocated now (its
    /// growth since it was opened is what statvfs already sees). `ENOSPC` / `EDQUOT` when the
    /// step cannot be had.
    pub fn charge(
        &self,
        demand: u64,
        bytes: u64,
        free: impl FnOnce() -> io::Result<u64>,
        step: impl FnOnce(u64) -> io::Result<u64>,
    ) -> io::Result<()> {
        if demand <= self.limit.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut s = self.slow.lock().unwrap_or_else(PoisonError::into_inner);
        if demand <= self.limit.load(Ordering::Acquire) {
            return Ok(());
        }
        let written = demand.saturating_sub(bytes).saturating_sub(s.base);
        if written > s.reported {
            let more = written - s.reported;
            s.res.wrote(more);
            s.reported = written;
        }
        let before = s.res.granted();
        let end = demand - s.base;
        s.res.ensure(end, free)?;
        let granted = s.res.granted();
        let allocated = step(granted - before)?;
        let grown = allocated.saturating_sub(s.alloc_base);
        s.res.allocated(grown);
        self.limit.store(s.base + granted, Ordering::Release);
        Ok(())
    }

    /// Bytes the reservation holds promised in the book.
    #[cfg(test)]
    pub(crate) fn promised_bytes(&self) -> u64 {
        let s = self.slow.lock().unwrap_or_else(PoisonError::into_inner);
        s.res.promised_bytes()
    }
}

/// A fixed amount promised on a file system (filestorage's unwritten bytes of a partial
/// transfer, whose parts are sparse): admitted against the free space like a
/// `Reservation`, shrunk as bytes land, given back whole when dropped, exactly once.
#[derive(Debug)]
pub struct Promise {
    dev: u64,
    bytes: u64,
}

impl Promise {
    /// Promises `bytes` on `dev` when `free` minus what is promised there minus `disk_reserve`
    /// covers them; `ENOSPC` otherwise (nothing taken).
    pub fn admit(dev: u64, disk_reserve: u64, bytes: u64, free: u64) -> io::Result<Promise> {
        let mut b = book();
        let promised = b.promised.get(&dev).copied().unwrap_or(0);
        if free.saturating_sub(promised).saturating_sub(disk_reserve) < bytes {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        if bytes > 0 {
            *b.promised.entry(dev).or_insert(0) += bytes;
        }
        Ok(Promise { dev, bytes })
    }

    /// Promises `bytes` without a check (state found at start, which was admitted before).
    pub fn unchecked(dev: u64, bytes: u64) -> Promise {
        if bytes > 0 {
            *book().promised.entry(dev).or_insert(0) += bytes;
        }
        Promise { dev, bytes }
    }

    /// Bytes still promised.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// `n` of the promised bytes reached the disk.
    pub fn landed(&mut self, n: u64) {
        let n = n.min(self.bytes);
        self.bytes -= n;
        take(&mut book().promised, &self.dev, n);
    }

    /// `n` more bytes are to come again (a file started over), without a check: they were
    /// admitted once.
    pub fn add(&mut self, n: u64) {
        if n > 0 {
            self.bytes += n;
            *book().promised.entry(self.dev).or_insert(0) += n;
        }
    }
}

impl Drop for Promise {
    fn drop(&mut self) {
        take(&mut book().promised, &self.dev, self.bytes);
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

    #[test]
    fn stepped_space_takes_a_step_ahead_of_the_demand_whatever_the_order() {
        let a = account(5, 0, Some(("stepper", 3 * STEP)));
        let (dev, owner) = (a.dev, a.owner.clone().unwrap().0);
        let len = 100 * STEP;
        let res = Reservation::admit(a, len, u64::MAX / 2).unwrap();
        let s = Stepped::new(res, 0, 0);
        let free = || Ok(u64::MAX / 2);
        // The first claim takes one step, preallocated: nothing stays promised, one step held.
        let mut asked = Vec::new();
        s.charge(4096, 4096, free, |n| {
            asked.push(n);
            Ok(n)
        })
        .unwrap();
        assert_eq!(asked, [STEP]);
        assert_eq!((promised(dev), held_by(&owner)), (0, STEP));
        // Claims within the step cost no step, wherever they write.
        s.charge(STEP, 4096, free, |_| panic!("no step due"))
            .unwrap();
        // Past it: one more step from what was written, no more.
        s.charge(STEP + 4096, 4096, free, |n| {
            assert_eq!(n, STEP);
            Ok(2 * STEP)
        })
        .unwrap();
        // Granted two steps, one written: one held.
        assert_eq!(held_by(&owner), STEP);
        drop(s);
        assert_eq!((promised(dev), held_by(&owner)), (0, 0));
    }

    #[test]
    fn stepped_space_without_preallocation_stays_promised_and_counts_the_owner_cap() {
        let a = account(6, 0, Some(("trickler", 2 * STEP)));
        let (dev, owner) = (a.dev, a.owner.clone().unwrap().0);
        let free = || Ok(u64::MAX / 2);
        let s1 = Stepped::new(
            Reservation::admit(a.clone(), 64 * STEP, u64::MAX / 2).unwrap(),
            0,
            0,
        );
        // tmpfs: nothing allocated, the step stays promised.
        s1.charge(1, 1, free, |_| Ok(0)).unwrap();
        assert_eq!(promised(dev), STEP);
        let s2 = Stepped::new(
            Reservation::admit(a.clone(), 64 * STEP, u64::MAX / 2).unwrap(),
            0,
            0,
        );
        s2.charge(1, 1, free, |_| Ok(0)).unwrap();
        let s3 = Stepped::new(
            Reservation::admit(a, 64 * STEP, u64::MAX / 2).unwrap(),
            0,
            0,
        );
        let e = s3.charge(1, 1, free, |_| Ok(0)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EDQUOT));
        assert_eq!(held_by(&owner), 2 * STEP);
        drop((s1, s2, s3));
        assert_eq!((promised(dev), held_by(&owner)), (0, 0));
    }

    #[test]
    fn a_promise_is_admitted_shrinks_as_bytes_land_and_is_given_back_once() {
        let dev = u64::MAX - 7;
        let mut p = Promise::admit(dev, 10, 60, 100).unwrap();
        assert_eq!(promised(dev), 60);
        // 100 free - 60 promised - 10 reserve = 30.
        let e = Promise::admit(dev, 10, 31, 100).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        let q = Promise::admit(dev, 10, 30, 100).unwrap();
        p.landed(25);
        assert_eq!((p.bytes(), promised(dev)), (35, 65));
        // A file started over: its bytes are promised again (mutation sample H: `n > 0` as
        // `n == 0` added nothing, so a restarted file's space was promised to others too).
        p.add(5);
        assert_eq!((p.bytes(), promised(dev)), (40, 70));
        p.add(0);
        assert_eq!((p.bytes(), promised(dev)), (40, 70));
        p.landed(1000);
        assert_eq!((p.bytes(), promised(dev)), (0, 30));
        drop(p);
        drop(q);
        assert_eq!(promised(dev), 0);
        let r = Promise::unchecked(dev, 1 << 50);
        assert_eq!(promised(dev), 1 << 50);
        drop(r);
        assert_eq!(promised(dev), 0);
    }

    /// A reopened part's space counts from its base (the blocks it already held): a claim
    /// just past the base takes one step, not the base again; and each step reports to the
    /// reservation only the bytes written since the last one (mutation run: `demand - base`
    /// as `+` took the whole rest at once; `written - reported` as `+` reported bytes twice,
    /// so the owner was held for less than was granted).
    #[test]
    fn stepped_space_counts_from_its_base_and_reports_each_byte_once() {
        let a = account(9, 0, Some(("based", 100 * STEP)));
        let (dev, owner) = (a.dev, a.owner.clone().unwrap().0);
        let free = || Ok(u64::MAX / 2);
        let base = 2 * STEP;
        let s = Stepped::new(
            Reservation::admit(a, 4 * STEP, u64::MAX / 2).unwrap(),
            base,
            0,
        );
        let counts = || (promised(dev), held_by(&owner));
        s.charge(base + 1, 1, free, |_| Ok(0)).unwrap();
        assert_eq!(counts(), (STEP, STEP));
        // One step written, the next claimed: a second step.
        s.charge(base + STEP + 4096, 4096, free, |_| Ok(0)).unwrap();
        assert_eq!(counts(), (STEP, STEP));
        // Two written, the next claimed: a third; the first step's bytes are not counted again.
        s.charge(base + 2 * STEP + 4096, 4096, free, |_| Ok(0))
            .unwrap();
        assert_eq!(counts(), (STEP, STEP));
        drop(s);
        assert_eq!(counts(), (0, 0));
    }

    /// A step taken while part of the last one is still unwritten adds only its new bytes to
    /// the owner's count and to the device's promises (mutation sample F: `p1 - p0` as `+`
    /// promised the unwritten rest of the first step again, so other uploads were refused
    /// space that was free; `h1 - h0` as `+` did the same to the owner's cap).
    #[test]
    fn a_step_before_the_last_is_written_holds_only_the_new_bytes() {
        let a = account(8, 0, Some(("halfway", 10 * STEP)));
        let (dev, owner) = (a.dev, a.owner.clone().unwrap().0);
        let free = || Ok(u64::MAX / 2);
        let mut r = Reservation::admit(a, 4 * STEP, u64::MAX / 2).unwrap();
        r.ensure(1, free).unwrap();
        // Nothing preallocated (tmpfs): what is granted and not written stays promised too.
        assert_eq!(
            (r.granted(), held_by(&owner), promised(dev)),
            (STEP, STEP, STEP)
        );
        r.wrote(STEP / 2);
        assert_eq!((held_by(&owner), promised(dev)), (STEP / 2, STEP / 2));
        // Half a step written: the next step reaches a step past it.
        r.ensure(STEP + 1, free).unwrap();
        assert_eq!(r.granted(), STEP + STEP / 2);
        assert_eq!((held_by(&owner), promised(dev)), (STEP, STEP));
        drop(r);
        assert_eq!((held_by(&owner), promised(dev)), (0, 0));
    }
}
