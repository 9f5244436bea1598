//! [`CountingAlloc`]: the system allocator, counting this thread's live heap bytes, so that a
//! fuzz target can check that a decoder holds no more than its limit allows ("never asks to
//! buffer more than its limit") whatever the input claims.
//!
//! A binary opts in with `#[global_allocator]` (every fuzz target and `tests/fuzz_replay.rs`
//! do). Without it the [`Meter`] reads zero and the memory checks pass trivially, which is
//! why the replay test asserts [`is_counting`] first.
//!
//! Counters are per thread (libFuzzer runs the target on one thread; each replay test is on
//! its own), const-initialised `Cell`s without destructors, so the allocator never allocates
//! or touches a destroyed thread-local.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The system allocator with per-thread live and peak byte counts (see the module doc).
pub struct CountingAlloc;

fn add(n: isize) {
    let _ = LIVE.try_with(|live| {
        let v = live.get() + n;
        live.set(v);
        let _ = PEAK.try_with(|p| {
            if v > p.get() {
                p.set(v)
            }
        });
    });
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds `GlobalAlloc`'s
// contract; the counting around it only touches const-initialised thread-local `Cell`s (no
// allocation, no destructor, no reentrancy).
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            INSTALLED.store(true, Ordering::Relaxed);
            add(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            INSTALLED.store(true, Ordering::Relaxed);
            add(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (hence `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        add(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller guarantees `ptr`/`layout`/`new_size`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            add(new_size as isize - layout.size() as isize);
        }
        p
    }
}

/// True once [`CountingAlloc`] served an allocation in this process.
pub fn is_counting() -> bool {
    INSTALLED.load(Ordering::Relaxed)
}

fn live() -> isize {
    LIVE.try_with(Cell::get).unwrap_or(0)
}

/// Heap bytes a piece of code keeps across calls and at its worst inside one: call
/// [`enter`](Meter::enter) before each call into the code measured and [`leave`](Meter::leave)
/// after it (never nested). What a call returns to the caller counts as kept, so the figure is
/// an upper bound of what the code holds.
#[derive(Debug, Default)]
pub(crate) struct Meter {
    held: isize,
    peak: isize,
    start: isize,
}

impl Meter {
    pub(crate) fn enter(&mut self) {
        self.start = live();
        let _ = PEAK.try_with(|p| p.set(self.start));
    }

    pub(crate) fn leave(&mut self) {
        let peak = PEAK.try_with(Cell::get).unwrap_or(0);
        self.peak = self.peak.max(self.held + peak - self.start);
        self.held += live() - self.start;
    }

    /// The most bytes the code measured held at any point.
    pub(crate) fn peak(&self) -> usize {
        self.peak.max(0) as usize
    }

    /// Panics when the peak is over `max` bytes, naming `what`.
    pub(crate) fn check(&self, what: &str, max: usize) {
        assert!(
            self.peak() <= max,
            "{what} held {} bytes, over its bound of {max}",
            self.peak()
        );
    }
}
