//! The memory-management interface the fault path is written against.
//!
//! The core ([`crate::fault`]) decides *what* to map, poison or zap; an [`Mm`]
//! backend does it. Two backends implement it: [`crate::uffd::UffdMm`] over
//! userfaultfd on real page tables, and the simulated MM in
//! [`crate::model::sim`] that enforces the kernel's rules for the model
//! checker. All addresses are absolute virtual addresses in the mapping's
//! address space ([`SpaceId`]); ranges are aligned to the mapping's
//! [`MapInfo::page_size`] (4 KiB, or 2 MiB on a hugetlb BAR).

use std::fmt;
use std::ops::Range;

/// The base page size barmap maps with.
pub const PAGE_SIZE: usize = 4096;
/// The PMD size: the chunk the `huge` and `prefault` policies fill at once.
pub const HUGE_SIZE: usize = 2 << 20;

/// An address space whose threads fault on barmap mappings.
///
/// Today every mapping lives in the device's own process ([`SpaceId::LOCAL`]);
/// a device server would give each client process (and the userfaultfd it
/// passed over a socket) its own id. The core never assumes "self".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpaceId(pub u32);

impl SpaceId {
    /// The device's own process.
    pub const LOCAL: SpaceId = SpaceId(0);
}

/// A mapping's identity, unique for the device's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct MapId(pub u64);

impl fmt::Display for MapId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "map#{}", self.0)
    }
}

/// What the backend needs to know about a mapping.
#[derive(Debug, Clone)]
pub struct MapInfo {
    /// Identity.
    pub id: MapId,
    /// Address space.
    pub space: SpaceId,
    /// First byte.
    pub start: usize,
    /// Length in bytes (a multiple of `page_size`).
    pub len: usize,
    /// BAR index.
    pub region: u32,
    /// Offset into the region of `start`.
    pub offset: u64,
    /// Whether the mapping is writable.
    pub writable: bool,
    /// The smallest unit the backend can map, poison or zap in this mapping:
    /// [`PAGE_SIZE`], or [`HUGE_SIZE`] when the BAR is backed by 2 MiB huge
    /// pages. `start`, `len` and `offset` are multiples of it, and the fault
    /// path rounds every range it hands the backend to it.
    pub page_size: usize,
}

impl MapInfo {
    /// One past the last byte.
    pub fn end(&self) -> usize {
        self.start + self.len
    }
    /// The unit of [`MapInfo::page_size`] that contains `addr`.
    pub fn unit_at(&self, addr: usize) -> Range<usize> {
        let start = addr & !(self.page_size - 1);
        start..start + self.page_size
    }
    /// The region offset that `addr` (inside the mapping) maps.
    pub fn offset_of(&self, addr: usize) -> u64 {
        self.offset + (addr - self.start) as u64
    }
}

/// A page fault as the service sees it.
#[derive(Debug, Clone, Copy)]
pub struct Fault {
    /// Address space of the faulting thread.
    pub space: SpaceId,
    /// Faulting address (any byte of the page).
    pub addr: usize,
    /// Thread id of the faulting thread (0 if unknown).
    pub tid: u32,
    /// Whether it was a write.
    pub write: bool,
}

/// Why a backend operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MmError {
    /// A page in the range is already present (or poisoned). `done` pages
    /// before it were mapped by this call.
    Exists {
        /// Base (4 KiB) pages mapped before the present one.
        done: usize,
    },
    /// The range is no longer mapped or registered.
    Gone,
    /// The address space is changing under the call (an mremap in flight):
    /// try again once the faulting thread retries.
    Again,
    /// The operating system refused, with this errno.
    Os(i32),
    /// A failure injected by the simulated backend.
    Injected,
    /// The device memory behind the range is not committed yet, and
    /// committing it would pass the memory limit
    /// ([`crate::memory::MemoryBudget`]): nothing was mapped.
    OverLimit,
}

impl fmt::Display for MmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MmError::Exists { done } => write!(f, "page already present after {done} pages"),
            MmError::Gone => write!(f, "range no longer mapped"),
            MmError::Again => write!(f, "address space changing, try again"),
            MmError::Os(e) => write!(f, "{}", std::io::Error::from_raw_os_error(*e)),
            MmError::Injected => write!(f, "injected failure"),
            MmError::OverLimit => write!(f, "device memory limit reached"),
        }
    }
}

/// What [`Mm::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inserted {
    /// Base (4 KiB) pages mapped from the start of the range (a multiple of
    /// the mapping's page size in base pages).
    pub mapped: usize,
    /// The call stopped at a present page (the one after the mapped ones).
    /// Fewer pages than the range without this flag: the rest could not be
    /// filled in this call (the process split or shrank the mapping).
    pub stopped_at_present: bool,
}

/// Page-table operations on a mapping, the kernel's verbs.
///
/// Implementations must be callable from several service threads at once.
pub trait Mm: Send + Sync + 'static {
    /// Maps every page of `range` (io_remap_pfn_range semantics): a page that
    /// is already present stops the call with [`MmError::Exists`]; the
    /// kernel's version BUGs there, and the core reports it as a BUG event.
    fn remap(&self, map: &MapInfo, range: Range<usize>) -> Result<(), MmError>;

    /// Maps the pages of `range` in order up to the first one that is
    /// already present (or poisoned), which is not an error: a fault that
    /// lost a race (vmf_insert_pfn semantics, and UFFDIO_CONTINUE's).
    ///
    /// Device memory is committed on demand: `remap` and `insert` commit
    /// the device memory behind the whole range first (shmem's page cache:
    /// UFFDIO_CONTINUE maps only pages that exist, a hole is EFAULT), and
    /// fail with [`MmError::OverLimit`], mapping nothing, if that would pass
    /// the memory limit.
    fn insert(&self, map: &MapInfo, range: Range<usize>) -> Result<Inserted, MmError>;

    /// The first run of units in `from..map.end()` whose device memory is
    /// committed (a fill mapped it before, or a region write reached it),
    /// if any: what a fill can map without committing memory. Present or
    /// not in the page tables does not matter. A long run may be reported
    /// in pieces (each ending at a unit boundary): ask again from its end.
    fn next_resident(&self, map: &MapInfo, from: usize) -> Option<Range<usize>>;

    /// Marks the absent pages of `range` so that a touch raises SIGBUS, and
    /// wakes threads waiting on them. [`MmError::Exists`] if a page is present.
    fn poison(&self, map: &MapInfo, range: Range<usize>) -> Result<(), MmError>;

    /// Removes every page and poison marker in `range` (MADV_DONTNEED); the
    /// device memory behind them is kept.
    fn zap(&self, map: &MapInfo, range: Range<usize>) -> Result<(), MmError>;

    /// Wakes threads waiting on faults in `range` without mapping anything:
    /// they retry the access.
    fn wake(&self, space: SpaceId, range: Range<usize>);

    /// Unmaps `range` of the mapping and drops its fault registration.
    fn unmap(&self, map: &MapInfo, range: Range<usize>) -> Result<(), MmError>;

    /// A long fill (the `prefault` walk) begins on the calling thread: the
    /// backend may raise the thread's scheduling priority until
    /// [`Mm::end_long_fill`], so that the threads the fill wakes do not
    /// preempt it. Returns whether it raised it. Scheduling only: no effect
    /// on what is mapped. Backends without threads of their own do nothing.
    fn begin_long_fill(&self) -> bool {
        false
    }

    /// The long fill begun by [`Mm::begin_long_fill`] on this thread is over.
    fn end_long_fill(&self) {}

    /// Returns once every unmap or remap event that the process has already
    /// been told about (its munmap or mremap returned) has been handed to the
    /// core, so that a zap never meets a range the process has reused.
    /// Backends without such events have nothing to wait for.
    fn quiesce(&self) {}

    /// Returns once every unmap or remap event of a munmap or mremap that
    /// started before this call has been handed to the core, including
    /// those the kernel has not queued or a service thread has not read
    /// yet (which [`Mm::quiesce`] does not wait for). A munmap's event is
    /// queued after the range is free, so another thread may map the same
    /// addresses first: a mapping tracked there before its event lands
    /// would be cut by it. Called by threads of the program (before a new
    /// mapping is tracked, before barmap unmaps one), never by a service
    /// thread: the events it waits for are read by those threads.
    fn settle(&self) {
        self.quiesce();
    }

    /// Runs `f` (a zap that walks the core's registry) with the process's
    /// unmap and remap events held back: every event the process has been
    /// told about is handed to the core first (as [`Mm::quiesce`]), and no
    /// new one is read until `f` returns, so a munmap or mremap that starts
    /// meanwhile does not return, and its range is not reused, before the
    /// zap is done. `f` must not wait for an event to be read.
    fn with_events_held(&self, f: &mut dyn FnMut()) {
        self.quiesce();
        f()
    }

    /// The core's registry of this backend's device changed: the live part
    /// starting at `removed` (if any) is gone and the `added` ranges are
    /// live. Called with the registry write-locked, so a backend that
    /// routes faults of several devices by address (one userfaultfd per
    /// address space) always sees what the registry holds. Backends that
    /// serve one device have nothing to do.
    fn track(&self, _space: SpaceId, _removed: Option<usize>, _added: &[Range<usize>]) {}

    /// A fault at `page` that no mapping of this device covers: poisons the
    /// unit there (so the thread gets SIGBUS) and returns true, or returns
    /// false if the fault must be woken to retry instead (the address is
    /// not registered any more, or belongs to another device of the same
    /// address space). Called with the core's registry read-locked, so no
    /// mapping of this device can be tracked at `page` meanwhile.
    fn poison_stray(&self, space: SpaceId, page: usize) -> bool {
        poison_unit(self, space, page)
    }
}

/// Poisons the 4 KiB page, or failing that (a hugetlb vma takes only whole
/// huge pages) the 2 MiB page, at `page`; returns whether one was poisoned.
/// Nothing is poisoned over a present page.
pub fn poison_unit<B: Mm + ?Sized>(mm: &B, space: SpaceId, page: usize) -> bool {
    for unit in [PAGE_SIZE, HUGE_SIZE] {
        let start = page & !(unit - 1);
        let probe = MapInfo {
            id: MapId(0),
            space,
            start,
            len: unit,
            region: u32::MAX,
            offset: 0,
            writable: false,
            page_size: unit,
        };
        match mm.poison(&probe, start..start + unit) {
            Ok(()) => return true,
            Err(MmError::Os(libc::EINVAL)) => continue,
            Err(_) => return false,
        }
    }
    false
}

/// Rounds `addr` down to its page.
pub fn page_of(addr: usize) -> usize {
    addr & !(PAGE_SIZE - 1)
}

/// Base (4 KiB) pages in `range`.
pub fn pages(range: &Range<usize>) -> usize {
    (range.end - range.start) / PAGE_SIZE
}
