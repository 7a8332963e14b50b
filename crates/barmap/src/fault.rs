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
//!    shutdown. A fault re-checks the state under it, so no page is mapped
//!    while memory is off, and a zap under the write side sees no fill in
//!    flight.
//! 2. `MapEntry::live`: read by a fill of that mapping for the duration of its
//!    page-table call, written by unmap, so a mapping never disappears under
//!    a fill (the kernel gets this from mmap_lock).
//! 3. `tracked` (the 5.x `vma_lock`) and `registry`: leaves. `tracked` may be
//!    held across a backend call (`whole` holds it across the fill, as 5.14
//!    did); neither is held while another barmap lock is taken.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::AtomicU64;

use super::sync::{Arc, AtomicBool, AtomicU32, AtomicUsize, Mutex, Ordering, RwLock};
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

/// A live mapping, as the registry tracks it.
#[derive(Debug)]
pub struct MapEntry {
    info: MapInfo,
    /// The parts still mapped (partial unmaps cut holes).
    live: RwLock<Vec<Range<usize>>>,
    /// A page of it may carry a poison marker that a zap must clear.
    poisoned: AtomicBool,
    /// `prefault`: the next chunk to fill.
    cursor: AtomicUsize,
    /// Consecutive failed fills, for [`MAX_FILL_RETRIES`].
    fail_streak: AtomicU32,
    /// Thread id of the fault that first filled the mapping (for BUG reports).
    first_filler: AtomicU64,
}

impl MapEntry {
    /// The mapping's description.
    pub fn info(&self) -> &MapInfo {
        &self.info
    }
    /// The parts of the mapping that are still mapped.
    pub fn live_ranges(&self) -> Vec<Range<usize>> {
        self.live.read().clone()
    }
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
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            policy: Policy::default(),
            chunk: crate::mm::HUGE_SIZE,
            mutation: None,
        }
    }
}

type Registry = BTreeMap<(SpaceId, usize), (usize, Arc<MapEntry>)>;

/// The backend-agnostic fault path of one device.
pub struct Core<B: Mm> {
    mm: B,
    config: CoreConfig,
    /// The memory gate (`memory_lock`).
    gate: RwLock<GateState>,
    /// Live parts of live mappings, keyed by (space, start) -> (end, entry).
    registry: RwLock<Registry>,
    /// `legacy`/`whole`: mappings recorded as filled (the 5.x `vma_list`,
    /// and its `vma_lock`).
    tracked: Mutex<Vec<MapId>>,
    next_id: AtomicU64,
    /// Faults being served now (observational, like the counters).
    in_flight: AtomicU64,
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
            gate: RwLock::new(GateState {
                memory_enabled: true,
                low_power: false,
                gone: false,
            }),
            registry: RwLock::new(BTreeMap::new()),
            tracked: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            in_flight: AtomicU64::new(0),
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
        let unit = info.page_size;
        assert!(unit >= PAGE_SIZE && unit.is_power_of_two());
        assert!(info.start % unit == 0 && info.len % unit == 0 && info.offset % unit as u64 == 0);
        info.id = MapId(
            self.next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        );
        let range = info.start..info.end();
        let entry = Arc::new(MapEntry {
            live: RwLock::new(vec![range.clone()]),
            poisoned: AtomicBool::new(false),
            cursor: AtomicUsize::new(0),
            fail_streak: AtomicU32::new(0),
            first_filler: AtomicU64::new(0),
            info,
        });
        self.registry
            .write()
            .insert((entry.info.space, range.start), (range.end, entry.clone()));
        entry
    }

    /// Unmaps `range` (aligned to the mapping's page size, inside one live
    /// part) of `entry`.
    /// Returns whether the whole mapping is now gone.
    pub fn unmap(&self, entry: &Arc<MapEntry>, range: Range<usize>) -> Result<bool, MmError> {
        let mut live = entry.live.write();
        let idx = live
            .iter()
            .position(|r| r.start <= range.start && range.end <= r.end && range.start < range.end)
            .ok_or(MmError::Gone)?;
        let part = live[idx].clone();
        let pieces: Vec<Range<usize>> = [part.start..range.start, range.end..part.end]
            .into_iter()
            .filter(|r| r.start < r.end)
            .collect();
        self.mm.unmap(&entry.info, range.clone())?;
        // After the munmap: a fault queued for the range meanwhile finds the
        // entry, waits for `live`, sees the hole, and is woken into SIGSEGV
        // (no refault loop). A new mapping may already have taken the
        // addresses; the registry update below leaves its key alone.
        self.replace_in_registry(entry, &part, &pieces);
        live.remove(idx);
        live.extend(pieces);
        let gone = live.is_empty();
        if gone && !self.mutated(Mutation::UnmapKeepsTracked) {
            // The kernel's vm_ops->close: drop the first record of this mapping.
            let mut tracked = self.tracked.lock();
            if let Some(pos) = tracked.iter().position(|id| *id == entry.info.id) {
                tracked.remove(pos);
            }
        }
        Ok(gone)
    }

    fn replace_in_registry(&self, entry: &Arc<MapEntry>, old: &Range<usize>, new: &[Range<usize>]) {
        let space = entry.info.space;
        let mut reg = self.registry.write();
        if reg
            .get(&(space, old.start))
            .is_some_and(|(_, e)| e.info.id == entry.info.id)
        {
            reg.remove(&(space, old.start));
        }
        for r in new {
            reg.insert((space, r.start), (r.end, entry.clone()));
        }
    }

    fn lookup(&self, space: SpaceId, addr: usize) -> Option<Arc<MapEntry>> {
        let reg = self.registry.read();
        let (_, (end, entry)) = reg.range(..=(space, addr)).next_back()?;
        (entry.info.space == space && addr < *end).then(|| entry.clone())
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
        self.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let page = page_of(fault.addr);
        let (answer, prefault) = self.serve(fault, page);
        let counter = match answer {
            Answer::Filled => &self.counters.fills,
            Answer::Present => &self.counters.eexist,
            Answer::Sigbus => &self.counters.sigbus,
            Answer::Stale => &self.counters.stale,
            Answer::Retry => &self.counters.retries,
            Answer::Bug => &self.counters.bugs,
        };
        Counters::add(counter, 1);
        if let Some(entry) = prefault {
            self.prefault_rest(&entry);
        }
        self.in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        answer
    }

    /// Whether no fault is being served right now (for tests and reports
    /// that read the counters after the touching threads are done).
    pub fn idle(&self) -> bool {
        self.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 0
    }

    /// Answers the fault; also returns the mapping if the rest of it should
    /// be prefaulted once the answer is counted and the gate released.
    fn serve(&self, fault: &Fault, page: usize) -> (Answer, Option<Arc<MapEntry>>) {
        let Some(entry) = self.lookup(fault.space, page) else {
            if !self.mutated(Mutation::SkipStaleWake) {
                // No mapping, so no unit: wake the base page. (A fault in a
                // huge-page mapping is reported at its unit's start, which
                // this covers.)
                self.mm.wake(fault.space, page..page + PAGE_SIZE);
            }
            return (Answer::Stale, None);
        };
        // From here on `page` is the mapping's unit (a huge page on a hugetlb
        // BAR): the smallest range the backend can fill, poison or zap.
        let page = entry.info.unit_at(page).start;
        let gate = self.gate.read();
        let live = entry.live.read();
        let Some(part) = live.iter().find(|r| r.contains(&page)).cloned() else {
            if !self.mutated(Mutation::SkipStaleWake) {
                self.mm.wake(fault.space, entry.info.unit_at(page));
            }
            return (Answer::Stale, None);
        };
        if !gate.accessible() {
            return (self.answer_sigbus(&entry, page), None);
        }
        let answer = match self.config.policy {
            Policy::Legacy => self.fill_legacy(&entry, &live, fault, page),
            Policy::Whole => self.fill_whole(&entry, &live, fault, page),
            Policy::Page => self.fill_range(&entry, entry.info.unit_at(page), page),
            Policy::Huge => {
                let chunk = self.huge_chunk(&entry, &part, page);
                self.fill_range(&entry, chunk, page)
            }
            Policy::Prefault => {
                let chunk = self.chunk_around(&entry, &part, page);
                self.fill_range(&entry, chunk, page)
            }
        };
        drop(live);
        drop(gate);
        let prefault = self.config.policy == Policy::Prefault && answer == Answer::Filled;
        (answer, prefault.then_some(entry))
    }

    /// 5.8: record first, drop the lock, then fill the whole mapping.
    fn fill_legacy(
        &self,
        entry: &MapEntry,
        live: &[Range<usize>],
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
            Err(MmError::Exists { .. }) => self.report_bug(entry, fault, page),
            // The seed's second bug: the record stays although the fill failed.
            Err(e) => self.fill_failed(entry, page, e, None),
        }
    }

    /// 5.14: hold the lock across the fill; fill once; undo a failed fill.
    fn fill_whole(
        &self,
        entry: &MapEntry,
        live: &[Range<usize>],
        fault: &Fault,
        page: usize,
    ) -> Answer {
        let mut tracked = self.tracked.lock();
        if tracked.contains(&entry.info.id) && !self.mutated(Mutation::WholeNoRecheck) {
            drop(tracked);
            self.mm.wake(entry.info.space, entry.info.unit_at(page));
            return Answer::Present;
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
            Err(MmError::Exists { .. }) => {
                drop(tracked);
                self.zap_parts(entry, live);
                self.report_bug(entry, fault, page)
            }
            Err(e) => {
                drop(tracked);
                self.fill_failed(entry, page, e, Some(live))
            }
        }
    }

    /// Fills every live part of the mapping, strictly (remap semantics).
    fn remap_all(&self, entry: &MapEntry, live: &[Range<usize>]) -> Result<(), MmError> {
        for part in live {
            self.mm.remap(&entry.info, part.clone())?;
            Counters::add(&self.counters.pages_filled, pages(part) as u64);
        }
        entry.fail_streak.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// 6.10/6.12 and `prefault`: map `range`, which contains the faulting
    /// page (both in units of the mapping's page size). A present page is a
    /// lost race, not an error (EEXIST is success): if it stops the fill
    /// before the faulting page, the faulting page is tried alone; the rest
    /// is left to its own faults.
    fn fill_range(&self, entry: &MapEntry, range: Range<usize>, page: usize) -> Answer {
        let fill = |r: Range<usize>| self.mm.insert(&entry.info, r);
        let result = fill(range.clone()).and_then(|ins| {
            let reached = range.start + ins.mapped * PAGE_SIZE;
            if !ins.stopped_at_present || page < reached {
                Ok((ins.mapped, true))
            } else if page == reached {
                Ok((ins.mapped, false))
            } else {
                fill(entry.info.unit_at(page)).map(|one| (ins.mapped + one.mapped, one.mapped > 0))
            }
        });
        match result {
            Ok((mapped, page_mapped)) => {
                entry.fail_streak.store(0, Ordering::Relaxed);
                Counters::add(&self.counters.pages_filled, mapped as u64);
                if page_mapped {
                    Answer::Filled
                } else {
                    // Another fault mapped it and woke its own waiters; ours
                    // may have queued before that wake: wake it (harmless if
                    // nobody waits), as the kernel's uffd selftests do.
                    self.mm.wake(entry.info.space, entry.info.unit_at(page));
                    Answer::Present
                }
            }
            // Pages mapped before the failure are valid device memory mapped
            // under the gate, and nothing is tracked: no undo needed.
            Err(e) => self.fill_failed(entry, page, e, None),
        }
    }

    /// Maps every absent unit of `range`, stepping over present ones.
    fn insert_all(&self, entry: &MapEntry, range: Range<usize>) -> Result<usize, MmError> {
        let (mut at, mut mapped) = (range.start, 0);
        while at < range.end {
            let ins = self.mm.insert(&entry.info, at..range.end)?;
            mapped += ins.mapped;
            at += ins.mapped * PAGE_SIZE;
            if ins.stopped_at_present {
                at = entry.info.unit_at(at).end;
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
    fn huge_chunk(&self, entry: &MapEntry, part: &Range<usize>, page: usize) -> Range<usize> {
        let chunk = self.chunk_of(entry);
        let start = page & !(chunk - 1);
        let end = start + chunk;
        let offset_aligned = entry.info.offset_of(start.max(entry.info.start)) % chunk as u64 == 0;
        if start >= part.start && end <= part.end && offset_aligned {
            start..end
        } else {
            entry.info.unit_at(page)
        }
    }

    /// `prefault`: the aligned chunk around `page`, clipped to the live part.
    fn chunk_around(&self, entry: &MapEntry, part: &Range<usize>, page: usize) -> Range<usize> {
        let chunk = self.chunk_of(entry);
        let start = page & !(chunk - 1);
        start.max(part.start)..(start + chunk).min(part.end)
    }

    /// `prefault`: after the faulting chunk, fill the rest of the mapping
    /// chunk by chunk. Chunks are claimed through the entry's cursor, so any
    /// number of service threads share the work; each chunk re-takes the
    /// gate, so a zap waits for one chunk at most and stops the walk.
    fn prefault_rest(&self, entry: &MapEntry) {
        let chunk = self.chunk_of(entry);
        let base = entry.info.start & !(chunk - 1);
        let chunks = (entry.info.end() - base).div_ceil(chunk);
        loop {
            let gate = self.gate.read();
            if !gate.accessible() {
                return;
            }
            let live = entry.live.read();
            let index = entry.cursor.fetch_add(1, Ordering::Relaxed);
            if index >= chunks || live.is_empty() {
                return;
            }
            let c = base + index * chunk..base + (index + 1) * chunk;
            for part in live.iter() {
                let r = c.start.max(part.start)..c.end.min(part.end);
                if r.start >= r.end {
                    continue;
                }
                match self.insert_all(entry, r) {
                    Ok(mapped) => Counters::add(&self.counters.pages_filled, mapped as u64),
                    // Not the faulting page: leave it to its own fault.
                    Err(e) => {
                        tracing::debug!(map = %entry.info.id, error = %e, "prefault chunk skipped")
                    }
                }
            }
        }
    }

    /// A fill failed: zap the `undo` parts (a partial whole-mapping fill),
    /// then let the thread retry, or answer SIGBUS once retries are used up.
    /// `legacy` passes no undo, reproducing 5.8's stale record.
    fn fill_failed(
        &self,
        entry: &MapEntry,
        page: usize,
        error: MmError,
        undo: Option<&[Range<usize>]>,
    ) -> Answer {
        let _span = tracing::warn_span!("fill_failed", map = %entry.info.id, page).entered();
        tracing::warn!(%error, "fill failed");
        if let Some(parts) = undo {
            self.zap_parts(entry, parts);
        }
        if entry.fail_streak.fetch_add(1, Ordering::Relaxed) + 1 < MAX_FILL_RETRIES {
            self.mm.wake(entry.info.space, entry.info.unit_at(page));
            Answer::Retry
        } else {
            entry.fail_streak.store(0, Ordering::Relaxed);
            self.answer_sigbus(entry, page)
        }
    }

    fn report_bug(&self, entry: &MapEntry, fault: &Fault, page: usize) -> Answer {
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
        // the other fault mapped.
        self.mm.wake(entry.info.space, entry.info.unit_at(page));
        Answer::Bug
    }

    /// Memory is off: poison the page (the mapping's unit), which wakes the
    /// thread into SIGBUS.
    fn answer_sigbus(&self, entry: &MapEntry, page: usize) -> Answer {
        match self.mm.poison(&entry.info, entry.info.unit_at(page)) {
            Ok(()) => {
                entry.poisoned.store(true, Ordering::Relaxed);
                Answer::Sigbus
            }
            // Another fault poisoned it first; its ioctl woke this thread too.
            Err(MmError::Exists { .. }) => {
                self.mm.wake(entry.info.space, entry.info.unit_at(page));
                Answer::Sigbus
            }
            Err(error) => {
                tracing::warn!(map = %entry.info.id, page, %error, "poison failed");
                self.mm.wake(entry.info.space, entry.info.unit_at(page));
                Answer::Retry
            }
        }
    }

    // ----- zap and the gate's write side ------------------------------------

    /// Zaps the given parts of one mapping (pages and poison markers).
    fn zap_parts(&self, entry: &MapEntry, parts: &[Range<usize>]) {
        for part in parts {
            if let Err(error) = self.mm.zap(&entry.info, part.clone()) {
                tracing::error!(map = %entry.info.id, %error, "zap failed");
            }
            Counters::add(&self.counters.zaps, 1);
            Counters::add(&self.counters.pages_zapped, pages(part) as u64);
        }
    }

    /// Zaps every live mapping; the caller holds the gate for writing.
    fn zap_all(&self, _gate: &GateState) {
        let _span = tracing::debug_span!("zap_all").entered();
        if self.mutated(Mutation::SkipZap) {
            return;
        }
        for entry in self.mappings() {
            let live = entry.live.read();
            self.zap_parts(&entry, &live);
            entry.cursor.store(0, Ordering::Relaxed);
            entry.poisoned.store(false, Ordering::Relaxed);
        }
        self.tracked.lock().clear();
    }

    /// Clears poison markers left by faults while memory was off; the caller
    /// holds the gate for writing.
    fn clear_poison(&self, _gate: &GateState) {
        if self.mutated(Mutation::KeepPoison) {
            return;
        }
        for entry in self.mappings() {
            if entry.poisoned.swap(false, Ordering::Relaxed) {
                let live = entry.live.read();
                self.zap_parts(&entry, &live);
            }
        }
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
        }
        *gate = state;
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
                if let Err(error) = self.mm.poison(&entry.info, part.clone()) {
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
