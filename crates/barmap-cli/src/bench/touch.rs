//! Touching pages: the pattern a BAR holds, and threads that read it back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use barmap::Mapping;

use super::{MIB, PAGE};

/// Magic mixed into the first word of every page, to check what a touch reads.
const PATTERN: u64 = 0xba5e_ba11_0000_0000;

/// A range of mapped memory to touch: barmap's or a native view.
#[derive(Clone, Copy)]
pub(super) struct View {
    pub(super) addr: usize,
    pub(super) len: usize,
}

impl View {
    /// The whole of a barmap mapping.
    pub(super) fn of(m: &Mapping) -> View {
        View {
            addr: m.addr(),
            len: m.len(),
        }
    }
    /// How many pages it spans.
    pub(super) fn pages(&self) -> usize {
        self.len / PAGE
    }
    /// Reads the first word of page `i` (volatile) and says whether it holds
    /// the pattern written at BAR offset `base + i * PAGE`.
    pub(super) fn touch(&self, i: usize, base_page: usize) -> bool {
        assert!(i < self.pages());
        let p = (self.addr + i * PAGE) as *const u64;
        // SAFETY: `p` is page aligned inside a live mapping of `len` bytes that
        // this process created and keeps mapped while the view is used; device
        // memory is read only through volatile raw reads.
        let v = unsafe { p.read_volatile() };
        v == PATTERN | (base_page + i) as u64
    }
}

/// Touches pages of `view` with `threads` threads released by one barrier;
/// `interleave` gives thread t pages t, t+threads, ... (a storm on the same
/// chunks), else a contiguous slice each. Returns the time from release to
/// the last thread's finish and the count of wrong reads.
pub(super) fn touch_all(
    view: View,
    base_page: usize,
    threads: usize,
    interleave: bool,
) -> (Duration, u64) {
    let pages = view.pages();
    let barrier = Barrier::new(threads);
    let errors = AtomicU64::new(0);
    // Each thread notes when it passed the barrier and when it finished: the
    // run lasts from the first start to the last finish (a timer in the
    // spawning thread would miss work done while it waits to be scheduled).
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, errors) = (&barrier, &errors);
                s.spawn(move || {
                    let mut bad = 0;
                    barrier.wait();
                    let start = Instant::now();
                    if interleave {
                        let mut i = t;
                        while i < pages {
                            bad += u64::from(!view.touch(i, base_page));
                            i += threads;
                        }
                    } else {
                        let per = pages.div_ceil(threads);
                        for i in (t * per).min(pages)..((t + 1) * per).min(pages) {
                            bad += u64::from(!view.touch(i, base_page));
                        }
                    }
                    errors.fetch_add(bad, Ordering::Relaxed);
                    (start, Instant::now())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("touching thread panicked"))
            .collect()
    });
    let first = spans
        .iter()
        .map(|s| s.0)
        .min()
        .expect("at least one thread");
    let last = spans
        .iter()
        .map(|s| s.1)
        .max()
        .expect("at least one thread");
    (last - first, errors.load(Ordering::Relaxed))
}

/// Writes the pattern (first word of each page) into `size` bytes, by
/// `write(offset, chunk)`.
pub(super) fn write_pattern(
    size: usize,
    mut write: impl FnMut(u64, &[u8]) -> Result<(), String>,
) -> Result<(), String> {
    let mut buf = vec![0u8; MIB];
    for off in (0..size).step_by(MIB) {
        let n = MIB.min(size - off);
        for p in (0..n).step_by(PAGE) {
            let word = PATTERN | ((off + p) / PAGE) as u64;
            buf[p..p + 8].copy_from_slice(&word.to_ne_bytes());
        }
        write(off as u64, &buf[..n])?;
    }
    Ok(())
}
