//! Counters of the fault path. They observe the protocol and take no part in
//! it, so they are plain `std` atomics even in model-checking builds.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Live counters; read a consistent-enough copy with [`Counters::snapshot`].
#[derive(Debug, Default)]
pub struct Counters {
    pub(crate) faults: AtomicU64,
    pub(crate) fills: AtomicU64,
    pub(crate) pages_filled: AtomicU64,
    pub(crate) eexist: AtomicU64,
    pub(crate) sigbus: AtomicU64,
    pub(crate) over_limit: AtomicU64,
    pub(crate) stale: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) bugs: AtomicU64,
    pub(crate) zaps: AtomicU64,
    pub(crate) pages_zapped: AtomicU64,
    pub(crate) zap_failures: AtomicU64,
    pub(crate) unmap_events: AtomicU64,
    pub(crate) remap_events: AtomicU64,
    pub(crate) wakes: AtomicU64,
    pub(crate) fault_pages: AtomicU64,
    pub(crate) prefault_runs: AtomicU64,
    pub(crate) prefault_chunks: AtomicU64,
    pub(crate) prefault_pages: AtomicU64,
    pub(crate) prefault_skipped: AtomicU64,
    pub(crate) prefault_peak: AtomicU64,
    pub(crate) prefault_raised: AtomicU64,
    pub(crate) serve_ns: AtomicU64,
    pub(crate) fill_ns: AtomicU64,
    pub(crate) prefault_ns: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub(crate) fn max(counter: &AtomicU64, n: u64) {
        counter.fetch_max(n, Relaxed);
    }

    /// Adds the nanoseconds since `since`.
    pub(crate) fn add_ns(counter: &AtomicU64, since: std::time::Instant) {
        counter.fetch_add(since.elapsed().as_nanos() as u64, Relaxed);
    }

    /// A copy of every counter.
    pub fn snapshot(&self) -> Stats {
        Stats {
            faults: self.faults.load(Relaxed),
            fills: self.fills.load(Relaxed),
            pages_filled: self.pages_filled.load(Relaxed),
            eexist: self.eexist.load(Relaxed),
            sigbus: self.sigbus.load(Relaxed),
            over_limit: self.over_limit.load(Relaxed),
            stale: self.stale.load(Relaxed),
            retries: self.retries.load(Relaxed),
            bugs: self.bugs.load(Relaxed),
            zaps: self.zaps.load(Relaxed),
            pages_zapped: self.pages_zapped.load(Relaxed),
            zap_failures: self.zap_failures.load(Relaxed),
            unmap_events: self.unmap_events.load(Relaxed),
            remap_events: self.remap_events.load(Relaxed),
            wakes: self.wakes.load(Relaxed),
            fault_pages: self.fault_pages.load(Relaxed),
            prefault_runs: self.prefault_runs.load(Relaxed),
            prefault_chunks: self.prefault_chunks.load(Relaxed),
            prefault_pages: self.prefault_pages.load(Relaxed),
            prefault_skipped: self.prefault_skipped.load(Relaxed),
            prefault_peak: self.prefault_peak.load(Relaxed),
            prefault_raised: self.prefault_raised.load(Relaxed),
            serve_ns: self.serve_ns.load(Relaxed),
            fill_ns: self.fill_ns.load(Relaxed),
            prefault_ns: self.prefault_ns.load(Relaxed),
        }
    }
}

/// Counters of the fault path at one instant.
///
/// Every fault the service receives ends in exactly one of `fills`,
/// `eexist`, `sigbus`, `stale`, `retries` or `bugs`, so those add up to
/// `faults` once the service is idle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Fault events served.
    pub faults: u64,
    /// Faults that mapped pages.
    pub fills: u64,
    /// Pages mapped by those fills.
    pub pages_filled: u64,
    /// Faults whose page another fault had already mapped (the EEXIST race).
    pub eexist: u64,
    /// Faults answered with SIGBUS (memory disabled, low power, device gone,
    /// a fill that kept failing, or one past the memory limit).
    pub sigbus: u64,
    /// Of those, faults whose fill would have committed device memory past
    /// the memory limit ([`crate::MemoryBudget`]).
    pub over_limit: u64,
    /// Faults on an address no longer mapped: the thread was woken to retry.
    pub stale: u64,
    /// Fills that failed, were undone, and had the thread retry.
    pub retries: u64,
    /// BUG events: a whole-mapping fill met a present page (`legacy` only,
    /// unless something is badly wrong).
    pub bugs: u64,
    /// Mapping ranges zapped.
    pub zaps: u64,
    /// Pages covered by those zaps.
    pub pages_zapped: u64,
    /// Zaps that failed: those ranges were not revoked (reported as errors;
    /// 0 unless something is badly wrong).
    pub zap_failures: u64,
    /// Unmaps of mapping ranges by the process itself (munmap, `MAP_FIXED`
    /// over, an mremap shrink), which barmap forgot.
    pub unmap_events: u64,
    /// Moves of mapping ranges by the process itself (mremap).
    pub remap_events: u64,
    /// UFFDIO_WAKEs the fault path issued (to threads whose page another fill mapped, or that retry).
    pub wakes: u64,
    /// Of `pages_filled`, pages mapped by the faulting path itself (its chunk or page).
    pub fault_pages: u64,
    /// `prefault`: walks of the rest of a mapping started after a fault (one per service thread that joined).
    pub prefault_runs: u64,
    /// `prefault`: chunks those walks claimed and filled.
    pub prefault_chunks: u64,
    /// `prefault`: pages those walks mapped (the rest of `pages_filled`).
    pub prefault_pages: u64,
    /// `prefault`: chunks those walks skipped because a fault had filled them whole.
    pub prefault_skipped: u64,
    /// `prefault`: the most walks that ran at once (a high-water mark, not a count).
    pub prefault_peak: u64,
    /// `prefault` walks that ran at a raised scheduling priority
    /// ([`crate::service::FillSched`]).
    pub prefault_raised: u64,
    /// Nanoseconds service threads spent serving faults (lookup, fill, answer, prefault).
    pub serve_ns: u64,
    /// Of `serve_ns`, nanoseconds in the faulting path's fills.
    pub fill_ns: u64,
    /// Of `serve_ns`, nanoseconds in `prefault` walks.
    pub prefault_ns: u64,
}

impl Stats {
    /// The outcomes that should add up to `faults`.
    pub fn outcomes(&self) -> u64 {
        self.fills + self.eexist + self.sigbus + self.stale + self.retries + self.bugs
    }

    /// Counter-wise difference `self - earlier`.
    pub fn since(&self, earlier: &Stats) -> Stats {
        Stats {
            faults: self.faults - earlier.faults,
            fills: self.fills - earlier.fills,
            pages_filled: self.pages_filled - earlier.pages_filled,
            eexist: self.eexist - earlier.eexist,
            sigbus: self.sigbus - earlier.sigbus,
            over_limit: self.over_limit - earlier.over_limit,
            stale: self.stale - earlier.stale,
            retries: self.retries - earlier.retries,
            bugs: self.bugs - earlier.bugs,
            zaps: self.zaps - earlier.zaps,
            pages_zapped: self.pages_zapped - earlier.pages_zapped,
            zap_failures: self.zap_failures - earlier.zap_failures,
            unmap_events: self.unmap_events - earlier.unmap_events,
            remap_events: self.remap_events - earlier.remap_events,
            wakes: self.wakes.saturating_sub(earlier.wakes),
            fault_pages: self.fault_pages.saturating_sub(earlier.fault_pages),
            prefault_runs: self.prefault_runs.saturating_sub(earlier.prefault_runs),
            prefault_chunks: self.prefault_chunks.saturating_sub(earlier.prefault_chunks),
            prefault_pages: self.prefault_pages.saturating_sub(earlier.prefault_pages),
            prefault_skipped: self
                .prefault_skipped
                .saturating_sub(earlier.prefault_skipped),
            prefault_peak: self.prefault_peak,
            prefault_raised: self.prefault_raised.saturating_sub(earlier.prefault_raised),
            serve_ns: self.serve_ns.saturating_sub(earlier.serve_ns),
            fill_ns: self.fill_ns.saturating_sub(earlier.fill_ns),
            prefault_ns: self.prefault_ns.saturating_sub(earlier.prefault_ns),
        }
    }
}
