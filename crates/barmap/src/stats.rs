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
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
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
        }
    }
}
