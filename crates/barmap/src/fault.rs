//! The fault path, top to bottom: the mapping registry, the memory gate, the
//! fault policies, zap and reset.
//!
//! This file is compiled twice. As `crate::fault` it uses [`crate::sync`]
//! (std primitives) and serves real faults through [`crate::uffd`]. As
//! `crate::model::fault` it uses the shuttle flavour of the same facade and
//! serves the simulated MM, so the model checker explores exactly this code.
//! It therefore names its primitives only through `super::sync` and its
//! backend only through the [`Mm`] trait.
//!
//! # Units
//! The backend's smallest unit is the mapping's [`MapInfo::page_size`]:
//! 4 KiB, or 2 MiB on a BAR backed by huge pages (hugetlbfs can only map,
//! poison and zap whole huge pages). A fault is served for the unit that
//! contains it, so on such a BAR `page` maps 2 MiB per fault like `huge`.
//! Counters count 4 KiB pages either way.
//!
//! # Locks, outermost first
//! 1. `gate` (the kernel's `memory_lock`): read by every fault and by region
//!    access, written by memory disable/enable, low power, reset and
//!    shutdown. It admits in arrival order (a [`FairRwLock`]), so a fault
//!    waits for at most the transitions that arrived before it: back-to-back
//!    resets cannot starve faults. A fault re-checks the state under it, so no page is mapped
//!    while memory is off, and a zap under the write side sees no fill in
//!    flight.
//! 2. `MapEntry::live`: read by a fill of that mapping for the duration of its
//!    page-table call, written by unmap and by the process's own munmap and
//!    mremap (reported as events), so a mapping never disappears under a
//!    fill (the kernel gets this from mmap_lock). No thread waits for an
//!    event to be read while holding it.
//! 3. `tracked` (the 5.x `vma_lock`) and `registry`: leaves. `tracked` may be
//!    held across a backend call (`whole` holds it across the fill, as 5.14
//!    did); neither is held while another barmap lock is taken.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::AtomicU64;

use super::sync::{Arc, AtomicBool, AtomicU32, AtomicUsize, FairRwLock, Mutex, Ordering, RwLock};
use crate::mm::{page_of, pages, Fault, MapId, MapInfo, Mm, MmError, SpaceId, PAGE_SIZE};
use crate::policy::{Mutation, Policy};
use crate::stats::{Counters, Stats};

/// How many times a failing fill is undone and retried before the faulting
/// thread gets SIGBUS (the kernel answers VM_FAULT_SIGBUS at once; a retry
/// first is kinder to transient failures and still never loops forever).
const MAX_FILL_RETRIES: u32 = 3;

/// The memory-access state, guarded by the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateState {
    /// The device's COMMAND.MEM bit.
    pub memory_enabled: bool,
    /// The device is in a low-power state (D3hot).
    pub low_power: bool,
    /// The device has been dropped.
    pub gone: bool,
}

impl GateState {
    /// Whether device memory may be accessed now.
    pub fn accessible(&self) -> bool {
        self.memory_enabled && !self.low_power && !self.gone
    }
}

/// What a fault leaves to do once its answer is counted and the gate and
/// the mapping's parts are released.
enum After {
    /// `prefault`: fill the rest of the mapping.
    Prefault(Arc<MapEntry>),
    /// `whole`: zap a failed fill.
    Undo(Arc<MapEntry>),
}

/// A live mapping, as the registry tracks it.
#[derive(Debug)]
pub struct MapEntry {
    info: MapInfo,
    /// The parts still mapped, each described with its own start, length and
    /// region offset: partial unmaps cut holes, and the process may move a
    /// part elsewhere (mremap).
    live: RwLock<Vec<MapInfo>>,
    /// A page of it may carry a poison marker that a zap must clear.
    poisoned: AtomicBool,
    /// `prefault`: the next chunk to fill.
    cursor: AtomicUsize,
    /// `prefault`: one bit per aligned chunk of the mapping's first range
    /// (from its chunk-aligned start), set once a fault mapped that chunk
    /// whole, so that the walk does not probe it again page by page.
    /// Cleared with the cursor when the gate zaps. A hint for speed only:
    /// a chunk the process emptied since (MADV_DONTNEED_LOCKED, mremap) is
    /// skipped by the walk and served by its own faults, which never read
    /// the bits.
    filled: Box<[super::sync::AtomicU64]>,
    /// Consecutive failed fills, for [`MAX_FILL_RETRIES`].
    fail_streak: AtomicU32,
    /// Thread id of the fault that first filled the mapping (for BUG reports).
    first_filler: AtomicU64,
    /// `whole`: a fill failed and its pages are still to be zapped; no fill
    /// of this mapping starts until that undo is done.
    undo_pending: AtomicBool,
}

impl MapEntry {
    /// The bit of [`MapEntry::filled`] for the aligned chunk at `start`, if
    /// it lies inside the mapping's first range.
    fn filled_bit(&self, chunk: usize, start: usize) -> Option<(usize, u64)> {
        let base = self.info.start & !(chunk - 1);
        let i = start.checked_sub(base)? / chunk;
        (start % chunk == 0 && i / 64 < self.filled.len()).then_some((i / 64, 1 << (i % 64)))
    }

    fn mark_filled(&self, chunk: usize, start: usize) {
        if let Some((w, bit)) = self.filled_bit(chunk, start) {
            self.filled[w].fetch_or(bit, Ordering::Relaxed);
        }
    }

    fn is_filled(&self, chunk: usize, start: usize) -> bool {
        self.filled_bit(chunk, start)
            .is_some_and(|(w, bit)| self.filled[w].load(Ordering::Relaxed) & bit != 0)
    }

    fn clear_filled(&self) {
        for w in self.filled.iter() {
            w.store(0, Ordering::Relaxed);
        }
    }

    /// The mapping's description.
    pub fn info(&self) -> &MapInfo {
        &self.info
    }
    /// The region offset at `addr`, if a live part contains it.
    pub fn live_parts_at(&self, addr: usize) -> Option<u64> {
        self.live
            .read()
            .iter()
            .find(|p| p.start <= addr && addr < p.end())
            .map(|p| p.offset_of(addr))
    }
    /// The address ranges of the mapping that are still mapped.
    pub fn live_ranges(&self) -> Vec<Range<usize>> {
        self.live.read().iter().map(|p| p.start..p.end()).collect()
    }
}

/// The entry whose live part in `space` contains `addr`.
fn lookup_in(reg: &Registry, space: SpaceId, addr: usize) -> Option<Arc<MapEntry>> {
    let (_, (end, entry)) = reg.range(..=(space, addr)).next_back()?;
    (entry.info.space == space && addr < *end).then(|| entry.clone())
}

/// `part` without `hole` (which lies inside it): zero, one or two parts.
fn cut(part: &MapInfo, hole: &Range<usize>) -> Vec<MapInfo> {
    [part.start..hole.start, hole.end..part.end()]
        .into_iter()
        .filter(|r| r.start < r.end)
        .map(|r| sub_part(part, r))
        .collect()
}

/// The piece `r` of `part` (inside it), with its own offset.
fn sub_part(part: &MapInfo, r: Range<usize>) -> MapInfo {
    MapInfo {
        start: r.start,
        len: r.end - r.start,
        offset: part.offset_of(r.start),
        ..part.clone()
    }
}

/// The intersection of two ranges, if not empty.
fn overlap(a: &Range<usize>, b: &Range<usize>) -> Option<Range<usize>> {
    let r = a.start.max(b.start)..a.end.min(b.end);
    (r.start < r.end).then_some(r)
}

/// A BUG event: what the kernel would have crashed on.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BugEvent {
    /// The mapping.
    pub map: MapId,
    /// The faulting address.
    pub addr: usize,
    /// Thread id of the fault that hit the present page.
    pub tid: u32,
    /// Thread id of the fault that filled the mapping first (0 if unknown).
    pub first_tid: u32,
    /// One line in the style of the kernel's oops.
    pub what: String,
}

/// How one fault was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Pages were mapped and the thread woken.
    Filled,
    /// The page was already present: the thread was woken.
    Present,
    /// The thread was answered with SIGBUS.
    Sigbus,
    /// The address is no longer mapped: the thread was woken to retry.
    Stale,
    /// The fill failed and was undone: the thread was woken to retry.
    Retry,
    /// A whole-mapping fill met a present page: the kernel's BUG_ON.
    Bug,
}

/// Configuration of a [`Core`].
#[derive(Debug, Clone, Copy)]
pub struct CoreConfig {
    /// Fault policy.
    pub policy: Policy,
    /// Chunk size of `huge` and `prefault`, bytes (2 MiB; the simulated MM
    /// uses a few pages so that small models still cross chunk edges). A
    /// mapping whose page size is larger uses its page size instead.
    pub chunk: usize,
    /// A deliberate bug for the model checker's self-test; `None` always
    /// outside it.
    pub mutation: Option<Mutation>,
    /// Keep every mapping fully populated while memory is accessible (fill
    /// at map time and on re-enable), so that kernel-mode accesses never
    /// need a fault: for a userfaultfd that only sees user-mode faults.
    pub populate: bool,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            policy: Policy::default(),
            chunk: crate::mm::HUGE_SIZE,
            mutation: None,
            populate: false,
        }
    }
}

type Registry = BTreeMap<(SpaceId, usize), (usize, Arc<MapEntry>)>;

/// The backend-agnostic fault path of one device.
pub struct Core<B: Mm> {
    mm: B,
    config: CoreConfig,
    /// The memory gate (`memory_lock`).
    gate: FairRwLock<GateState>,
    /// Live parts of live mappings, keyed by (space, start) -> (end, entry).
    registry: RwLock<Registry>,
    /// `legacy`/`whole`: mappings recorded as filled (the 5.x `vma_list`,
    /// and its `vma_lock`).
    tracked: Mutex<Vec<MapId>>,
    next_id: AtomicU64,
    /// Faults being served now (observational, like the counters).
    in_flight: AtomicU64,
    /// `prefault` walks running now (observational, for
    /// [`Stats::prefault_peak`]).
    prefaulting: std::sync::atomic::AtomicU64,
    counters: Counters,
    bug_events: std::sync::Mutex<Vec<BugEvent>>,
}

impl<B: Mm> Core<B> {
    /// A core over `mm`, memory enabled.
    pub fn new(mm: B, config: CoreConfig) -> Self {
        assert!(config.chunk >= PAGE_SIZE && config.chunk.is_power_of_two());
        Core {
            mm,
            config,
            gate: FairRwLock::new(GateState {
                memory_enabled: true,
                low_power: false,
                gone: false,
            }),
            registry: RwLock::new(BTreeMap::new()),
            tracked: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            in_flight: AtomicU64::new(0),
            prefaulting: std::sync::atomic::AtomicU64::new(0),
            counters: Counters::default(),
            bug_events: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn mutated(&self, m: Mutation) -> bool {
        self.config.mutation == Some(m)
    }

    /// The backend.
    pub fn mm(&self) -> &B {
        &self.mm
    }

    /// The fault policy.
    pub fn policy(&self) -> Policy {
        self.config.policy
    }

    // ----- registry -------------------------------------------------------

    /// Starts tracking a mapping that the backend has just created and
    /// registered; `info.id` is assigned here. Returns its entry.
    pub fn register(&self, mut info: MapInfo) -> Arc<MapEntry> {
        // A range the process just unmapped may be the one being mapped
        // again: its forget must land first, not cut the new mapping. Its
        // munmap may still be in the kernel with the event not yet queued
        // (another thread's), so settle, not just quiesce.
        self.mm.settle();
        let unit = info.page_size;
        assert!(unit >= PAGE_SIZE && unit.is_power_of_two());
        assert!(info.start % unit == 0 && info.len % unit == 0 && info.offset % unit as u64 == 0);
        info.id = MapId(
            self.next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        );
        let range = info.start..info.end();
        let entry = Arc::new(MapEntry {
            live: RwLock::new(vec![info.clone()]),
            poisoned: AtomicBool::new(false),
            cursor: AtomicUsize::new(0),
            filled: {
                let chunk = self.config.chunk.max(info.page_size);
                let chunks = (info.end() - (info.start & !(chunk - 1))).div_ceil(chunk);
                (0..chunks.div_ceil(64))
                    .map(|_| super::sync::AtomicU64::new(0))
                    .collect()
            },
            fail_streak: AtomicU32::new(0),
            first_filler: AtomicU64::new(0),
            undo_pending: AtomicBool::new(false),
            info,
        });
        let mut reg = self.registry.write();
        reg.insert((entry.info.space, range.start), (range.end, entry.clone()));
        self.mm
            .track(entry.info.space, None, std::slice::from_ref(&range));
        drop(reg);
        entry
    }

    /// Unmaps `range` (aligned to the mapping's page size, inside one live
    /// part) of `entry`.
    /// Returns whether the whole mapping is now gone.
    pub fn unmap(&self, entry: &Arc<MapEntry>, range: Range<usize>) -> Result<bool, MmError> {
        // The process may have moved or unmapped part of it a moment ago
        // (in another thread, its event maybe not yet queued): never unmap
        // addresses that are no longer the mapping's.
        self.mm.settle();
        let mut live = entry.live.write();
        let idx = live
            .iter()
            .position(|p| p.start <= range.start && range.end <= p.end() && range.start < range.end)
            .ok_or(MmError::Gone)?;
        let part = live[idx].clone();
        let pieces = cut(&part, &range);
        self.mm.unmap(&part, range.clone())?;
        // After the munmap: a fault queued for the range meanwhile finds the
        // entry, waits for `live`, sees the hole, and is woken into SIGSEGV
        // (no refault loop). A new mapping may already have taken the
        // addresses; the registry update below leaves its key alone.
        self.replace_in_registry(entry, &part, &pieces);
        live.remove(idx);
        live.extend(pieces);
        Ok(self.after_cut(entry, &live))
    }

    /// Untracks a mapping that has no live part left (the kernel's
    /// vm_ops->close drops its record); returns whether it is gone.
    fn after_cut(&self, entry: &MapEntry, live: &[MapInfo]) -> bool {
        let gone = live.is_empty();
        if gone && !self.mutated(Mutation::UnmapKeepsTracked) {
            let mut tracked = self.tracked.lock();
            if let Some(pos) = tracked.iter().position(|id| *id == entry.info.id) {
                tracked.remove(pos);
            }
        }
        gone
    }

    /// The process unmapped `range` itself (munmap, `MAP_FIXED` over it, the
    /// tail of a shrinking mremap): forget every part of every mapping in
    /// it, without touching the address space, which may already hold
    /// someone else's memory. Returns how many parts were cut.
    pub fn forget(&self, space: SpaceId, range: Range<usize>) -> usize {
        let _span = tracing::debug_span!("forget", start = range.start, end = range.end).entered();
        let cuts = self.take_out(space, range, None);
        if cuts > 0 {
            Counters::add(&self.counters.unmap_events, 1);
        }
        cuts
    }

    /// The process moved `len` bytes at `from` to `to` (mremap): the parts
    /// of mappings in the old range now live at the new one, with the same
    /// device offsets. Returns how many parts moved.
    pub fn moved(&self, space: SpaceId, from: usize, to: usize, len: usize) -> usize {
        let _span = tracing::debug_span!("moved", from, to, len).entered();
        let moves = self.take_out(space, from..from + len, Some(to));
        if moves > 0 {
            Counters::add(&self.counters.remap_events, 1);
        }
        moves
    }

    /// Cuts `range` out of every live part in `space`; with `to`, the cut
    /// pieces live on at `to + (their start - range.start)`. Returns how
    /// many parts were cut.
    fn take_out(&self, space: SpaceId, range: Range<usize>, to: Option<usize>) -> usize {
        let mut cuts = 0;
        for entry in self.entries_in(space, &range) {
            let mut live = entry.live.write();
            let mut kept = Vec::with_capacity(live.len() + 2);
            for part in live.iter() {
                let Some(hole) = overlap(&(part.start..part.end()), &range) else {
                    kept.push(part.clone());
                    continue;
                };
                let mut pieces = cut(part, &hole);
                if let Some(to) = to {
                    let mut moved = sub_part(part, hole.clone());
                    moved.start = to + (hole.start - range.start);
                    pieces.push(moved);
                }
                self.replace_in_registry(&entry, part, &pieces);
                kept.extend(pieces);
                cuts += 1;
            }
            *live = kept;
            self.after_cut(&entry, &live);
        }
        cuts
    }

    /// Entries with a live part intersecting `range` of `space`, once each.
    fn entries_in(&self, space: SpaceId, range: &Range<usize>) -> Vec<Arc<MapEntry>> {
        let reg = self.registry.read();
        let mut out: Vec<Arc<MapEntry>> = Vec::new();
        for (_, (end, entry)) in reg.range((space, 0)..(space, range.end)) {
            if *end > range.start && !out.iter().any(|e| e.info.id == entry.info.id) {
                out.push(entry.clone());
            }
        }
        out
    }

    fn replace_in_registry(&self, entry: &Arc<MapEntry>, old: &MapInfo, new: &[MapInfo]) {
        let space = entry.info.space;
        let mut reg = self.registry.write();
        let removed = reg
            .get(&(space, old.start))
            .is_some_and(|(_, e)| e.info.id == entry.info.id);
        if removed {
            reg.remove(&(space, old.start));
        }
        for r in new {
            reg.insert((space, r.start), (r.end(), entry.clone()));
        }
        let added: Vec<Range<usize>> = new.iter().map(|r| r.start..r.end()).collect();
        self.mm.track(space, removed.then_some(old.start), &added);
    }

    fn lookup(&self, space: SpaceId, addr: usize) -> Option<Arc<MapEntry>> {
        lookup_in(&self.registry.read(), space, addr)
    }

    /// Every live mapping, once each.
    pub fn mappings(&self) -> Vec<Arc<MapEntry>> {
        let mut out: Vec<Arc<MapEntry>> = Vec::new();
        for (_, entry) in self.registry.read().values() {
            if !out.iter().any(|e| e.info.id == entry.info.id) {
                out.push(entry.clone());
            }
        }
        out
    }

    /// Mappings recorded as filled (`legacy`/`whole`), duplicates included.
    pub fn tracked(&self) -> Vec<MapId> {
        self.tracked.lock().clone()
    }

    // ----- the fault ------------------------------------------------------

    /// Serves one fault: look the mapping up, take the gate for reading, and
    /// either fill by policy or answer SIGBUS. Wakes the faulting thread in
    /// every case.
    pub fn handle_fault(&self, fault: &Fault) -> Answer {
        Counters::add(&self.counters.faults, 1);
        let started = std::time::Instant::now();
        self.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let page = page_of(fault.addr);
        let (answer, after) = self.serve(fault, page);
        let counter = match answer {
            Answer::Filled => &self.counters.fills,
            Answer::Present => &self.counters.eexist,
            Answer::Sigbus => &self.counters.sigbus,
            Answer::Stale => &self.counters.stale,
            Answer::Retry => &self.counters.retries,
            Answer::Bug => &self.counters.bugs,
        };
        Counters::add(counter, 1);
        match after {
            Some(After::Prefault(entry)) => {
                let walk = std::time::Instant::now();
                self.prefault_rest(&entry);
                Counters::add_ns(&self.counters.prefault_ns, walk);
            }
            Some(After::Undo(entry)) => self.undo_fill(&entry),
            None => {}
        }
        Counters::add_ns(&self.counters.serve_ns, started);
        self.in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        answer
    }

    /// UFFDIO_WAKE over `range`, counted.
    fn wake(&self, space: SpaceId, range: Range<usize>) {
        Counters::add(&self.counters.wakes, 1);
        self.mm.wake(space, range);
    }

    /// Whether no fault is being served right now (for tests and reports
    /// that read the counters after the touching threads are done).
    pub fn idle(&self) -> bool {
        self.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 0
    }

    /// Answers the fault; also returns what is left to do for the mapping
    /// once the answer is counted and the gate and the mapping's parts are
    /// released.
    fn serve(&self, fault: &Fault, page: usize) -> (Answer, Option<After>) {
        let entry = match self.lookup(fault.space, page) {
            Some(entry) => entry,
            None => {
                // An unmap or mremap the process already saw may still be on
                // its way to the registry: let it land, then look again. The
                // registry stays read-locked until the fault is answered, so
                // no new mapping can be tracked, and then registered with the
                // userfaultfd, at this address meanwhile.
                self.mm.quiesce();
                let reg = self.registry.read();
                match lookup_in(&reg, fault.space, page) {
                    Some(entry) => entry,
                    None => return (self.answer_unknown(&reg, fault.space, page), None),
                }
            }
        };
        // From here on `page` is the mapping's unit (a huge page on a hugetlb
        // BAR): the smallest range the backend can fill, poison or zap.
        let page = entry.info.unit_at(page).start;
        let gate = self.gate.read();
        let live = entry.live.read();
        let Some(part) = live
            .iter()
            .find(|p| p.start <= page && page < p.end())
            .cloned()
        else {
            if !self.mutated(Mutation::SkipStaleWake) {
                self.wake(fault.space, entry.info.unit_at(page));
            }
            return (Answer::Stale, None);
        };
        if !gate.accessible() {
            return (self.answer_sigbus(&entry, &part, page), None);
        }
        let answer = match self.config.policy {
            Policy::Legacy => self.fill_legacy(&entry, &live, &part, fault, page),
            Policy::Whole => self.fill_whole(&entry, &live, &part, fault, page),
            Policy::Page => self.fill_range(&entry, &part, part.unit_at(page), page),
            Policy::Huge => {
                let chunk = self.huge_chunk(&entry, &part, page);
                self.fill_range(&entry, &part, chunk, page)
            }
            Policy::Prefault => {
                let chunk = self.chunk_around(&entry, &part, page);
                let fill = std::time::Instant::now();
                let answer = self.fill_range(&entry, &part, chunk, page);
                Counters::add_ns(&self.counters.fill_ns, fill);
                answer
            }
        };
        drop(live);
        drop(gate);
        let after =
            if entry.undo_pending.load(Ordering::SeqCst) && self.config.policy == Policy::Whole {
                Some(After::Undo(entry))
            } else if self.config.policy == Policy::Prefault
                && matches!(answer, Answer::Filled | Answer::Present)
            {
                // Every service thread that met the mapping's first touches
                // joins the walk, the one that lost the race for the
                // faulting chunk (Present) too: the walk's chunks are
                // claimed through the cursor, so they fill on every core.
                Some(After::Prefault(entry))
            } else {
                None
            };
        (answer, after)
    }

    /// A fault at an address no mapping of this device covers, though the
    /// process's range is registered with its userfaultfd: the part of a
    /// mapping that the process grew with mremap (the kernel refuses to grow
    /// a vfio-pci mapping: it is VM_DONTEXPAND), or a stale fault of a range
    /// that is gone. The first gets SIGBUS, the second is woken and retries
    /// (a SIGSEGV, or whatever the process mapped there since).
    fn answer_unknown(&self, _registry: &Registry, space: SpaceId, page: usize) -> Answer {
        if self.mutated(Mutation::SkipStaleWake) {
            return Answer::Stale;
        }
        if self.mm.poison_stray(space, page) {
            return Answer::Sigbus;
        }
        self.wake(space, page..page + PAGE_SIZE);
        Answer::Stale
    }

    /// 5.8: record first, drop the lock, then fill the whole mapping.
    fn fill_legacy(
        &self,
        entry: &MapEntry,
        live: &[MapInfo],
        part: &MapInfo,
        fault: &Fault,
        page: usize,
    ) -> Answer {
        self.tracked.lock().push(entry.info.id);
        let _ = entry.first_filler.compare_exchange(
            0,
            u64::from(fault.tid),
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        );
        match self.remap_all(entry, live) {
            Ok(()) => Answer::Filled,
            Err(MmError::Exists { .. }) => self.report_bug(entry, part, fault, page),
            // The seed's second bug: the record stays although the fill failed.
            Err(e) => self.fill_failed(entry, part, page, e),
        }
    }

    /// 5.14: hold the lock across the fill; fill once; undo a failed fill.
    fn fill_whole(
        &self,
        entry: &MapEntry,
        live: &[MapInfo],
        part: &MapInfo,
        fault: &Fault,
        page: usize,
    ) -> Answer {
        let mut tracked = self.tracked.lock();
        if entry.undo_pending.load(Ordering::SeqCst) {
            // A failed fill's pages are being zapped: come back after.
            drop(tracked);
            self.wake(part.space, part.unit_at(page));
            return Answer::Retry;
        }
        if tracked.contains(&entry.info.id) && !self.mutated(Mutation::WholeNoRecheck) {
            drop(tracked);
            // Filled already: a lost race, or a page the process dropped
            // itself (MADV_DONTNEED), which 5.14 could not see because the
            // kernel refuses that madvise on a vfio-pci mapping. Map the
            // faulting page (it stops at a present one, so a lost race costs
            // one call), never answer "present" over an absent page.
            return self.map_unit(entry, part, page);
        }
        let _ = entry.first_filler.compare_exchange(
            0,
            u64::from(fault.tid),
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        );
        match self.remap_all(entry, live) {
            Ok(()) => {
                tracked.push(entry.info.id);
                Answer::Filled
            }
            // Past the memory limit nothing was mapped (the backend commits
            // the whole range first): nothing to undo, and no zap may clear
            // the SIGBUS answer before the thread sees it.
            Err(MmError::OverLimit) => {
                drop(tracked);
                self.answer_over_limit(entry, part, page)
            }
            // A failed fill is undone (5.14 zaps the vma under vma_lock):
            // no other fill starts before the zap, which runs once this
            // fault has released the mapping's parts (undo_fill).
            Err(MmError::Exists { .. }) => {
                entry.undo_pending.store(true, Ordering::SeqCst);
                drop(tracked);
                self.report_bug(entry, part, fault, page)
            }
            Err(e) => {
                entry.undo_pending.store(true, Ordering::SeqCst);
                drop(tracked);
                self.fill_failed(entry, part, page, e)
            }
        }
    }

    /// `whole`: zaps the mapping after a failed fill, with the process's
    /// unmap and remap events held back, so that the zap never meets a
    /// range the process unmapped and may have reused since (the failure
    /// itself may be that unmap); then lets fills of the mapping start again.
    fn undo_fill(&self, entry: &MapEntry) {
        let _span = tracing::debug_span!("undo_fill", map = %entry.info.id).entered();
        self.mm.with_events_held(&mut || {
            let live = entry.live.read();
            self.zap_parts(entry, &live);
        });
        entry.undo_pending.store(false, Ordering::SeqCst);
    }

    /// Maps the unit at `page` alone, stopping at a present page: `Filled`
    /// if this call mapped it, `Present` if it already was (the thread is
    /// woken either way).
    fn map_unit(&self, entry: &MapEntry, part: &MapInfo, page: usize) -> Answer {
        let unit = part.unit_at(page);
        match self.mm.insert(part, unit.clone()) {
            Err(MmError::OverLimit) => self.answer_over_limit(entry, part, page),
            Ok(ins) if ins.mapped > 0 => {
                Counters::add(&self.counters.pages_filled, ins.mapped as u64);
                Answer::Filled
            }
            Ok(_) => {
                self.wake(part.space, unit);
                Answer::Present
            }
            Err(_) => {
                self.wake(part.space, unit);
                Answer::Retry
            }
        }
    }

    /// Fills every live part of the mapping, strictly (remap semantics).
    fn remap_all(&self, entry: &MapEntry, live: &[MapInfo]) -> Result<(), MmError> {
        for part in live {
            self.mm.remap(part, part.start..part.end())?;
            Counters::add(&self.counters.pages_filled, (part.len / PAGE_SIZE) as u64);
        }
        entry.fail_streak.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// 6.10/6.12 and `prefault`: map `range`, which contains the faulting
    /// page (both in units of the mapping's page size). A present page is a
    /// lost race, not an error (EEXIST is success): if it stops the fill
    /// before the faulting page, the faulting page is tried alone; the rest
    /// is left to its own faults.
    fn fill_range(
        &self,
        entry: &MapEntry,
        part: &MapInfo,
        range: Range<usize>,
        page: usize,
    ) -> Answer {
        let fill = |r: Range<usize>| self.mm.insert(part, r);
        let unit = part.unit_at(page);
        // Near the memory limit a chunk may not fit where its faulting
        // unit still does: commit that alone.
        let first = match fill(range.clone()) {
            Err(MmError::OverLimit) if range != unit => fill(unit.clone()).map(|ins| (unit, ins)),
            other => other.map(|ins| (range, ins)),
        };
        let result = first.and_then(|(range, ins)| {
            let reached = range.start + ins.mapped * PAGE_SIZE;
            let chunk = self.chunk_of(entry);
            if self.config.policy == Policy::Prefault
                && range.len() == chunk
                && reached == range.end
            {
                entry.mark_filled(chunk, range.start);
            }
            if page < reached {
                Ok((ins.mapped, true))
            } else if ins.stopped_at_present && page == reached {
                Ok((ins.mapped, false))
            } else {
                // Stopped before the faulting page (a present page earlier,
                // or a part the backend could not fill in one piece).
                fill(part.unit_at(page)).map(|one| (ins.mapped + one.mapped, one.mapped > 0))
            }
        });
        match result {
            Ok((mapped, page_mapped)) => {
                entry.fail_streak.store(0, Ordering::Relaxed);
                Counters::add(&self.counters.pages_filled, mapped as u64);
                Counters::add(&self.counters.fault_pages, mapped as u64);
                if page_mapped {
                    Answer::Filled
                } else {
                    // Another fault mapped it and woke its own waiters; ours
                    // may have queued before that wake: wake it (harmless if
                    // nobody waits), as the kernel's uffd selftests do.
                    self.wake(part.space, part.unit_at(page));
                    Answer::Present
                }
            }
            // Pages mapped before the failure are valid device memory mapped
            // under the gate, and nothing is tracked: no undo needed.
            Err(e) => self.fill_failed(entry, part, page, e),
        }
    }

    /// Maps every absent unit of `range` (inside `part`), stepping over
    /// present ones.
    fn insert_all(&self, part: &MapInfo, range: Range<usize>) -> Result<usize, MmError> {
        let (mut at, mut mapped) = (range.start, 0);
        while at < range.end {
            let ins = self.mm.insert(part, at..range.end)?;
            mapped += ins.mapped;
            at += ins.mapped * PAGE_SIZE;
            if ins.stopped_at_present || ins.mapped == 0 {
                at = part.unit_at(at).end;
            }
        }
        Ok(mapped)
    }

    /// The chunk of `huge` and `prefault` for `entry`: the configured
    /// chunk, or the mapping's page size if that is larger.
    fn chunk_of(&self, entry: &MapEntry) -> usize {
        self.config.chunk.max(entry.info.page_size)
    }

    /// `huge`: the aligned chunk around `page` if it lies inside the live
    /// part and its device offset is aligned too (6.13), else the page.
    fn huge_chunk(&self, entry: &MapEntry, part: &MapInfo, page: usize) -> Range<usize> {
        let chunk = self.chunk_of(entry);
        let start = page & !(chunk - 1);
        let end = start + chunk;
        if start >= part.start && end <= part.end() && part.offset_of(start) % chunk as u64 == 0 {
            start..end
        } else {
            part.unit_at(page)
        }
    }

    /// `prefault`: the aligned chunk around `page`, clipped to the live part.
    fn chunk_around(&self, entry: &MapEntry, part: &MapInfo, page: usize) -> Range<usize> {
        let chunk = self.chunk_of(entry);
        let start = page & !(chunk - 1);
        start.max(part.start)..(start + chunk).min(part.end())
    }

    /// `prefault`: after the faulting chunk, map the rest of the mapping
    /// chunk by chunk, where device memory exists: memory is committed on
    /// demand, so a hole (never filled or written) is left to its own fault
    /// instead of being committed now, and a mapping of a huge, sparsely
    /// used BAR costs what is used. Chunks (aligned, clipped to each live
    /// part, in part order) are claimed through the entry's cursor, so any
    /// number of service threads share the work, and a run of chunks with no
    /// committed memory is skipped in one step; each chunk re-takes the
    /// gate, so a zap waits for one chunk at most and stops the walk.
    fn prefault_rest(&self, entry: &MapEntry) {
        Counters::add(&self.counters.prefault_runs, 1);
        let walking = self.prefaulting.fetch_add(1, Ordering::Relaxed) + 1;
        Counters::max(&self.counters.prefault_peak, walking);
        if self.mm.begin_long_fill() {
            Counters::add(&self.counters.prefault_raised, 1);
        }
        self.prefault_walk(entry);
        self.mm.end_long_fill();
        self.prefaulting.fetch_sub(1, Ordering::Relaxed);
    }

    fn prefault_walk(&self, entry: &MapEntry) {
        let chunk = self.chunk_of(entry);
        loop {
            let gate = self.gate.read();
            if !gate.accessible() {
                return;
            }
            let live = entry.live.read();
            let index = entry.cursor.fetch_add(1, Ordering::Relaxed);
            let (mut rest, mut first) = (index, 0);
            let mut claimed = None;
            for part in live.iter() {
                let base = part.start & !(chunk - 1);
                let n = (part.end() - base).div_ceil(chunk);
                if rest < n {
                    let c = base + rest * chunk;
                    claimed = Some((
                        part,
                        base,
                        first + n,
                        c.max(part.start)..(c + chunk).min(part.end()),
                    ));
                    break;
                }
                rest -= n;
                first += n;
            }
            let Some((part, base, next_part, r)) = claimed else {
                return;
            };
            let part_first = next_part - (part.end() - base).div_ceil(chunk);
            if r.len() == chunk && entry.is_filled(chunk, r.start) {
                Counters::add(&self.counters.prefault_skipped, 1);
                continue;
            }
            match self.mm.next_resident(part, r.start) {
                // Nothing committed in the rest of this part.
                None => {
                    entry.cursor.fetch_max(next_part, Ordering::Relaxed);
                }
                // Nothing committed before the chunk of `run`.
                Some(run) if run.start >= r.end => {
                    let to = part_first + (run.start - base) / chunk;
                    entry.cursor.fetch_max(to, Ordering::Relaxed);
                }
                Some(run) => {
                    Counters::add(&self.counters.prefault_chunks, 1);
                    let mut run = run.start..run.end.min(r.end);
                    loop {
                        match self.insert_all(part, run.clone()) {
                            Ok(mapped) => {
                                Counters::add(&self.counters.pages_filled, mapped as u64);
                                Counters::add(&self.counters.prefault_pages, mapped as u64);
                            }
                            // Not the faulting page: leave it to its own fault.
                            Err(e) => {
                                tracing::debug!(map = %entry.info.id, error = %e, "prefault chunk skipped");
                                break;
                            }
                        }
                        match self.mm.next_resident(part, run.end) {
                            Some(next) if next.start < r.end => {
                                run = next.start..next.end.min(r.end)
                            }
                            _ => break,
                        }
                    }
                }
            }
        }
    }

    /// A fill failed: let the thread retry, or answer SIGBUS once retries
    /// are used up (`whole` undoes the partial fill afterwards; `legacy`
    /// does not, reproducing 5.8's stale record). A range that the process
    /// is changing or has unmapped is not a failure of the device: the
    /// thread retries without using up a retry.
    fn fill_failed(&self, entry: &MapEntry, part: &MapInfo, page: usize, error: MmError) -> Answer {
        let _span = tracing::warn_span!("fill_failed", map = %entry.info.id, page).entered();
        match error {
            MmError::Gone => {
                tracing::debug!("fill found the range unmapped");
                self.wake(part.space, part.unit_at(page));
                return Answer::Stale;
            }
            MmError::Again => {
                tracing::debug!("fill raced an address-space change");
                self.wake(part.space, part.unit_at(page));
                return Answer::Retry;
            }
            // Committing the memory would pass the limit: SIGBUS at once
            // (a retry would meet the same limit), never more memory.
            MmError::OverLimit => return self.answer_over_limit(entry, part, page),
            _ => tracing::warn!(%error, "fill failed"),
        }
        if entry.fail_streak.fetch_add(1, Ordering::Relaxed) + 1 < MAX_FILL_RETRIES {
            self.wake(part.space, part.unit_at(page));
            Answer::Retry
        } else {
            entry.fail_streak.store(0, Ordering::Relaxed);
            self.answer_sigbus(entry, part, page)
        }
    }

    /// A fill would have committed device memory past the limit: SIGBUS,
    /// counted in `over_limit`.
    fn answer_over_limit(&self, entry: &MapEntry, part: &MapInfo, page: usize) -> Answer {
        tracing::warn!(map = %entry.info.id, page, "fill refused: device memory limit reached");
        let answer = self.answer_sigbus(entry, part, page);
        if answer == Answer::Sigbus {
            Counters::add(&self.counters.over_limit, 1);
        }
        answer
    }

    fn report_bug(&self, entry: &MapEntry, part: &MapInfo, fault: &Fault, page: usize) -> Answer {
        let first_tid = entry
            .first_filler
            .load(std::sync::atomic::Ordering::Relaxed) as u32;
        let what = format!(
            "kernel BUG: whole-mapping fill of {} met a present page at {:#x} \
             (fault by tid {}; the mapping was filled first by tid {})",
            entry.info.id, page, fault.tid, first_tid
        );
        let mut events = self.bug_events.lock().unwrap_or_else(|e| e.into_inner());
        if events.len() < 8 {
            tracing::error!("{what}");
        }
        if events.len() < 64 {
            events.push(BugEvent {
                map: entry.info.id,
                addr: page,
                tid: fault.tid,
                first_tid,
                what,
            });
        }
        drop(events);
        // The kernel thread would die here; barmap lets it run on the page
        // (mapped by the other fault, or now by this one).
        self.map_unit(entry, part, page);
        Answer::Bug
    }

    /// Memory is off: poison the page (the mapping's unit), which wakes the
    /// thread into SIGBUS.
    fn answer_sigbus(&self, entry: &MapEntry, part: &MapInfo, page: usize) -> Answer {
        match self.mm.poison(part, part.unit_at(page)) {
            Ok(()) => {
                entry.poisoned.store(true, Ordering::Relaxed);
                Answer::Sigbus
            }
            // Another fault poisoned it first; its ioctl woke this thread too.
            Err(MmError::Exists { .. }) => {
                self.wake(part.space, part.unit_at(page));
                Answer::Sigbus
            }
            Err(error) => {
                tracing::warn!(map = %entry.info.id, page, %error, "poison failed");
                self.wake(part.space, part.unit_at(page));
                Answer::Retry
            }
        }
    }

    // ----- zap and the gate's write side ------------------------------------

    /// Zaps the given parts of one mapping (pages and poison markers). A
    /// zap that fails is counted as a failure (`zap_failures`) and reported,
    /// never as a zap.
    fn zap_parts(&self, entry: &MapEntry, parts: &[MapInfo]) {
        for part in parts {
            let range = part.start..part.end();
            match self.mm.zap(part, range.clone()) {
                Ok(()) => {
                    Counters::add(&self.counters.zaps, 1);
                    Counters::add(&self.counters.pages_zapped, pages(&range) as u64);
                }
                // Part of the range is not mapped any more: the process
                // unmapped it a moment ago (its event not yet read, and held
                // back while a zap runs, so the addresses are not reused
                // yet). madvise zapped every page that is still mapped.
                Err(MmError::Os(libc::ENOMEM)) => {
                    tracing::debug!(map = %entry.info.id, "zap met a range the process is unmapping");
                    Counters::add(&self.counters.zaps, 1);
                }
                Err(error) => {
                    Counters::add(&self.counters.zap_failures, 1);
                    tracing::error!(map = %entry.info.id, %error, "zap failed: the range is not revoked");
                }
            }
        }
    }

    /// Zaps every live mapping; the caller holds the gate for writing.
    fn zap_all(&self, _gate: &GateState) {
        let _span = tracing::debug_span!("zap_all").entered();
        if self.mutated(Mutation::SkipZap) {
            return;
        }
        // A range the process unmapped and may have reused must be out of
        // the registry before the zap walks it, and stay out while it does.
        self.mm.with_events_held(&mut || {
            for entry in self.mappings() {
                let live = entry.live.read();
                self.zap_parts(&entry, &live);
                entry.cursor.store(0, Ordering::Relaxed);
                entry.clear_filled();
                entry.poisoned.store(false, Ordering::Relaxed);
            }
        });
        self.tracked.lock().clear();
    }

    /// Clears poison markers left by faults while memory was off; the caller
    /// holds the gate for writing.
    fn clear_poison(&self, _gate: &GateState) {
        if self.mutated(Mutation::KeepPoison) {
            return;
        }
        // As in zap_all: never walk a range the process has reused.
        self.mm.with_events_held(&mut || {
            for entry in self.mappings() {
                if entry.poisoned.swap(false, Ordering::Relaxed) {
                    let live = entry.live.read();
                    self.zap_parts(&entry, &live);
                }
            }
        });
    }

    /// Moves the gate to `next`, zapping on the way out of the accessible
    /// state and clearing poison on the way in.
    fn transition(&self, next: impl FnOnce(&mut GateState)) {
        let mut gate = self.gate.write();
        let was = gate.accessible();
        let mut state = *gate;
        next(&mut state);
        if was && !state.accessible() {
            self.zap_all(&gate);
        } else if !was && state.accessible() {
            self.clear_poison(&gate);
            if self.config.populate {
                for entry in self.mappings() {
                    self.populate_locked(&entry);
                }
            }
        }
        *gate = state;
    }

    /// [`CoreConfig::populate`]: maps every page of a new mapping now if
    /// memory is accessible (and does nothing otherwise).
    pub fn populate(&self, entry: &MapEntry) {
        if !self.config.populate {
            return;
        }
        let gate = self.gate.read();
        if gate.accessible() {
            self.populate_locked(entry);
        }
    }

    /// Maps every absent page of `entry`; the caller holds the gate.
    fn populate_locked(&self, entry: &MapEntry) {
        let live = entry.live.read();
        for part in live.iter() {
            match self.insert_all(part, part.start..part.end()) {
                Ok(mapped) => Counters::add(&self.counters.pages_filled, mapped as u64),
                Err(e) => tracing::warn!(map = %entry.info.id, error = %e, "populate failed"),
            }
        }
    }

    /// COMMAND.MEM written: `false` revokes every mapping (later touches
    /// SIGBUS), `true` lets touches fault pages back in.
    pub fn set_memory_enabled(&self, enabled: bool) {
        let _span = tracing::info_span!("set_memory_enabled", enabled).entered();
        self.transition(|s| s.memory_enabled = enabled);
    }

    /// Enters or leaves a low-power state, which revokes like a disable.
    pub fn set_low_power(&self, low_power: bool) {
        let _span = tracing::info_span!("set_low_power", low_power).entered();
        self.transition(|s| s.low_power = low_power);
    }

    /// Resets: zaps every mapping and runs `reset` with the gate held, so
    /// faults arriving meanwhile wait and are served afterwards.
    pub fn reset<R>(&self, reset: impl FnOnce() -> R) -> R {
        let _span = tracing::info_span!("reset").entered();
        let gate = self.gate.write();
        self.zap_all(&gate);
        let result = reset();
        drop(gate);
        result
    }

    /// The device is going away: revoke everything and poison every live
    /// page, so that threads blocked in faults and any later touch get
    /// SIGBUS without a service thread. Idempotent.
    pub fn shutdown(&self) {
        let _span = tracing::info_span!("shutdown").entered();
        let mut gate = self.gate.write();
        if gate.gone {
            return;
        }
        if gate.accessible() {
            self.zap_all(&gate);
        } else {
            self.clear_poison(&gate);
        }
        gate.gone = true;
        for entry in self.mappings() {
            let live = entry.live.read();
            for part in live.iter() {
                if let Err(error) = self.mm.poison(part, part.start..part.end()) {
                    tracing::warn!(map = %entry.info.id, %error, "poison at shutdown failed");
                }
            }
            entry.poisoned.store(true, Ordering::Relaxed);
        }
    }

    /// Runs `access` if device memory is accessible, under the gate's read
    /// side; otherwise returns the state that forbids it. `access` must not
    /// touch barmap mappings (the kernel's recursive-lock bug): copy through
    /// a bounce buffer outside.
    pub fn with_memory<R>(&self, access: impl FnOnce() -> R) -> Result<R, GateState> {
        let gate = self.gate.read();
        if gate.accessible() {
            Ok(access())
        } else {
            Err(*gate)
        }
    }

    /// The gate's state now.
    pub fn gate_state(&self) -> GateState {
        *self.gate.read()
    }

    /// The counters now.
    pub fn stats(&self) -> Stats {
        self.counters.snapshot()
    }

    /// BUG events recorded so far (at most 64).
    pub fn bug_events(&self) -> Vec<BugEvent> {
        self.bug_events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
