//! [`MemoryBudget`]: bytes that machines of one server may hold at once, over all connections.
//!
//! Some things a peer sends must be held whole before they can be answered: a TEJ request or
//! list message (parsed once its frame ends), the have-set of a JTP BATCH. Each is bounded per
//! connection by the protocol's limits, but a thousand connections each holding the largest one
//! would hold a thousand times that. A machine therefore takes a [`Grant`] from the server's
//! budget before it holds such bytes and refuses the request ("busy") when the budget cannot
//! cover it; the grant gives its bytes back when dropped.
//!
//! The budget is a counter, not an allocator: it is pure bookkeeping (an atomic integer), so
//! machines stay free of I/O. Out of scope: bulk data (it never passes through a machine) and
//! per-connection buffers (bounded by their own constants).
//!
//! ```
//! use ferry::proto::budget::MemoryBudget;
//!
//! let b = MemoryBudget::new(100);
//! let g = b.try_grant(60).unwrap();
//! assert!(b.try_grant(50).is_none());
//! assert_eq!(b.in_use(), 60);
//! drop(g);
//! assert_eq!(b.in_use(), 0);
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A server-wide bound on bytes held by machines; cheap to clone (every clone is the same
/// budget).
#[derive(Clone, Debug)]
pub struct MemoryBudget(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    max: u64,
    used: AtomicU64,
}

impl MemoryBudget {
    /// A budget of `max` bytes.
    pub fn new(max: u64) -> MemoryBudget {
        MemoryBudget(Arc::new(Inner {
            max,
            used: AtomicU64::new(0),
        }))
    }

    /// The bound, in bytes.
    pub fn max(&self) -> u64 {
        self.0.max
    }

    /// Bytes granted and not yet given back.
    pub fn in_use(&self) -> u64 {
        self.0.used.load(Ordering::SeqCst)
    }

    /// `bytes` more, if the budget has them; `None` otherwise (nothing is taken then).
    pub fn try_grant(&self, bytes: u64) -> Option<Grant> {
        let mut g = Grant {
            budget: self.clone(),
            bytes: 0,
        };
        g.try_grow(bytes).then_some(g)
    }

    /// An empty grant of this budget, to grow piece by piece with [`Grant::try_grow`].
    pub fn empty_grant(&self) -> Grant {
        Grant {
            budget: self.clone(),
            bytes: 0,
        }
    }
}

/// Bytes taken from a [`MemoryBudget`], given back when dropped (or by [`Grant::release`]).
#[derive(Debug)]
pub struct Grant {
    budget: MemoryBudget,
    bytes: u64,
}

impl Grant {
    /// Bytes this grant holds.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Takes `more` bytes into this grant if the budget has them; false (and nothing taken)
    /// otherwise.
    pub fn try_grow(&mut self, more: u64) -> bool {
        let inner = &self.budget.0;
        let ok = inner
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                u.checked_add(more).filter(|&n| n <= inner.max)
            })
            .is_ok();
        if ok {
            self.bytes += more;
        }
        ok
    }

    /// Gives every byte back; the grant stays usable (empty).
    pub fn release(&mut self) {
        if self.bytes > 0 {
            self.budget.0.used.fetch_sub(self.bytes, Ordering::SeqCst);
            self.bytes = 0;
        }
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_are_bounded_and_given_back() {
        let b = MemoryBudget::new(10);
        let mut g = b.empty_grant();
        assert!(g.try_grow(4));
        assert!(g.try_grow(6));
        assert!(!g.try_grow(1));
        assert_eq!((g.bytes(), b.in_use()), (10, 10));
        let other = b.clone();
        assert!(other.try_grant(1).is_none());
        g.release();
        assert_eq!((g.bytes(), b.in_use()), (0, 0));
        let h = other.try_grant(10).unwrap();
        assert_eq!(b.in_use(), 10);
        drop(h);
        drop(g);
        assert_eq!(b.in_use(), 0);
    }

    #[test]
    fn a_grant_past_u64_is_refused_without_wrapping() {
        let b = MemoryBudget::new(u64::MAX);
        let _g = b.try_grant(u64::MAX - 1).unwrap();
        assert!(b.try_grant(2).is_none());
        assert_eq!(b.in_use(), u64::MAX - 1);
    }

    #[test]
    fn threads_never_exceed_the_budget() {
        let b = MemoryBudget::new(1000);
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if let Some(g) = b.try_grant(300) {
                            assert!(b.in_use() <= 1000);
                            drop(g);
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(b.in_use(), 0);
    }
}
