//! A simulated MM with the kernel's rules, for the model checker.
//!
//! Page tables are a map from page address to [`Pte`]; "threads" are shuttle
//! tasks that touch pages. The rules, made explicit:
//! - a whole-range remap over a present page is a BUG (io_remap_pfn_range's
//!   `BUG_ON(!pte_none(*pte))`): recorded as a violation;
//! - an insert stops at a present page, without error (vmf_insert_pfn);
//! - a touch of an absent page queues a fault event and sleeps until a wake
//!   covering the page (install, poison or explicit wake), then retries;
//! - a touch of a poisoned page is SIGBUS; of an unmapped address SIGSEGV;
//! - zap clears pages and poison and wakes nobody; unmap wakes nobody either
//!   (conservatively: the real unmap's UFFDIO_UNREGISTER does wake), so a
//!   fault the core finds stale must be woken by the core;
//! - poison needs a registered range: an unmapped or not yet registered one
//!   (reserved PROT_NONE, before the core tracks it) is ENOENT.
//! - injected failures: the next fill maps half its range and fails;
//! - device memory is committed on demand, as shmem's page cache is: a page
//!   of the device is *resident* once a fill mapped it (the real backend
//!   allocates the range of a fill before its UFFDIO_CONTINUE, which maps
//!   only pages that exist), or if the scenario made it so
//!   ([`SimMm::make_resident`], a region write); `next_resident` reports
//!   exactly those, and zap, poison and unmap never drop them. With a limit
//!   on resident pages ([`SimMm::limit_resident`]), a fill that would need
//!   more is refused whole, mapping nothing ([`MmError::OverLimit`]), as the
//!   backend's commit is checked before its CONTINUE.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Range;

use super::sync::{Condvar, Mutex};
use crate::mm::{Fault, Inserted, MapInfo, Mm, MmError, SpaceId, PAGE_SIZE};
use crate::policy::Mutation;

/// A page-table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pte {
    /// Maps the device page at this region offset.
    Present {
        /// Region offset of the page.
        offset: u64,
    },
    /// A poison marker: a touch gets SIGBUS.
    Poisoned,
}

/// What a touch saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    /// The value of the device word.
    Value(u64),
    /// SIGBUS.
    Sigbus,
    /// SIGSEGV.
    Segv,
}

/// The device's memory content at `offset` (constant, so every read is
/// checkable).
pub fn device_value(offset: u64) -> u64 {
    0xd0_0000 + offset / PAGE_SIZE as u64
}

#[derive(Debug, Default)]
struct State {
    ptes: BTreeMap<usize, Pte>,
    /// Mapped ranges: start -> end.
    vmas: BTreeMap<usize, usize>,
    /// Ranges reserved PROT_NONE until their registration is complete.
    hidden: Vec<Range<usize>>,
    /// Per page: bumped by every wake covering it.
    wakes: BTreeMap<usize, u64>,
    queue: VecDeque<Fault>,
    stop: bool,
    fail_next_fill: bool,
    next_addr: usize,
    /// Freed address ranges, reused last-in first-out (so that a new mapping
    /// lands where an old one was, as mmap tends to).
    free: Vec<Range<usize>>,
    violations: Vec<String>,
    trace: Vec<String>,
    /// Resident device pages: (region, page offset).
    resident: BTreeSet<(u32, u64)>,
    /// At most this many resident pages (the memory limit).
    resident_limit: Option<usize>,
}

/// The simulated MM.
#[derive(Debug)]
pub struct SimMm {
    state: Mutex<State>,
    cv: Condvar,
    mutation: Option<Mutation>,
}

fn me() -> String {
    super::sync::thread::current()
        .name()
        .map_or_else(|| "main".to_string(), str::to_string)
}

impl SimMm {
    /// An empty address space.
    pub fn new(mutation: Option<Mutation>) -> Self {
        SimMm {
            state: Mutex::new(State {
                next_addr: 0x10_0000,
                ..State::default()
            }),
            cv: Condvar::new(),
            mutation,
        }
    }

    /// Appends a line to the trace (prefixed with the current thread).
    pub fn note(&self, line: impl AsRef<str>) {
        let mut s = self.state.lock();
        s.trace.push(format!("[{}] {}", me(), line.as_ref()));
    }

    /// Reserves `len` bytes of address space (reusing the last freed range
    /// of the same size) for a new mapping.
    pub fn mmap(&self, len: usize) -> usize {
        let mut s = self.state.lock();
        let start = match s.free.iter().rposition(|r| r.end - r.start == len) {
            Some(i) => s.free.remove(i).start,
            None => {
                let a = s.next_addr;
                s.next_addr += len + PAGE_SIZE;
                a
            }
        };
        s.vmas.insert(start, start + len);
        s.hidden.push(start..start + len);
        s.trace.push(format!(
            "[{}] mmap {:#x}..{:#x} PROT_NONE",
            me(),
            start,
            start + len
        ));
        start
    }

    /// Opens a reserved range for access (the mprotect after registration).
    pub fn publish(&self, start: usize) {
        let mut s = self.state.lock();
        s.hidden.retain(|r| r.start != start);
        s.trace
            .push(format!("[{}] mprotect {start:#x}: accessible", me()));
    }

    /// Makes the device pages of `region` at `offsets` resident (written
    /// before the scenario starts).
    pub fn make_resident(&self, region: u32, offsets: Range<u64>) {
        let mut s = self.state.lock();
        for off in offsets.step_by(PAGE_SIZE) {
            s.resident.insert((region, off));
        }
    }

    /// Lets at most `pages` device pages be resident: a fill that would
    /// need more fails with [`MmError::OverLimit`] and maps nothing.
    pub fn limit_resident(&self, pages: usize) {
        self.state.lock().resident_limit = Some(pages);
    }

    /// Makes the next fill (remap or insert) fail after mapping half of it.
    pub fn fail_next_fill(&self) {
        self.state.lock().fail_next_fill = true;
    }

    /// Touches `addr` as thread `tid`: returns the word, or the signal.
    pub fn touch(&self, space: SpaceId, addr: usize, tid: u32) -> Touch {
        let page = addr & !(PAGE_SIZE - 1);
        let mut s = self.state.lock();
        let mut faults = 0;
        loop {
            faults += 1;
            if faults > 100 {
                let trace = s.trace[s.trace.len().saturating_sub(40)..].join("\n    ");
                panic!("violation[livelock]: touch of {page:#x} faulted 100 times\n  trace:\n    {trace}");
            }
            let mapped = s
                .vmas
                .range(..=page)
                .next_back()
                .is_some_and(|(_, &end)| page < end)
                && !s.hidden.iter().any(|r| r.contains(&page));
            if !mapped {
                s.trace.push(format!("[{}] touch {page:#x}: SIGSEGV", me()));
                return Touch::Segv;
            }
            match s.ptes.get(&page) {
                Some(Pte::Present { offset }) => return Touch::Value(device_value(*offset)),
                Some(Pte::Poisoned) => {
                    s.trace
                        .push(format!("[{}] touch {page:#x}: SIGBUS (poisoned)", me()));
                    return Touch::Sigbus;
                }
                None => {}
            }
            s.trace
                .push(format!("[{}] touch {page:#x}: fault, event queued", me()));
            s.queue.push_back(Fault {
                space,
                addr,
                tid,
                write: false,
            });
            let seen = s.wakes.get(&page).copied().unwrap_or(0);
            self.cv.notify_all();
            s = self
                .cv
                .wait_while(s, |s| s.wakes.get(&page).copied().unwrap_or(0) == seen);
        }
    }

    /// The next fault event for a service thread; `None` once stopped and
    /// drained.
    pub fn next_fault(&self) -> Option<Fault> {
        let s = self.state.lock();
        let mut s = self.cv.wait_while(s, |s| s.queue.is_empty() && !s.stop);
        s.queue.pop_front()
    }

    /// Lets service threads finish once the queue is drained.
    pub fn stop(&self) {
        self.state.lock().stop = true;
        self.cv.notify_all();
    }

    /// Present pages inside `range`.
    pub fn present_in(&self, range: Range<usize>) -> Vec<usize> {
        let s = self.state.lock();
        s.ptes
            .range(range)
            .filter(|(_, p)| matches!(p, Pte::Present { .. }))
            .map(|(a, _)| *a)
            .collect()
    }

    /// Rule violations recorded by the MM itself (BUGs).
    pub fn violations(&self) -> Vec<String> {
        self.state.lock().violations.clone()
    }

    /// The trace so far.
    pub fn trace(&self) -> Vec<String> {
        self.state.lock().trace.clone()
    }

    fn wake_locked(&self, s: &mut State, range: Range<usize>) {
        for page in range.step_by(PAGE_SIZE) {
            *s.wakes.entry(page).or_insert(0) += 1;
        }
        self.cv.notify_all();
    }

    fn covered(s: &State, range: &Range<usize>) -> bool {
        s.vmas
            .range(..=range.start)
            .next_back()
            .is_some_and(|(_, &end)| range.end <= end)
    }

    fn fill(&self, map: &MapInfo, range: Range<usize>, strict: bool) -> Result<Inserted, MmError> {
        let verb = if strict { "remap" } else { "insert" };
        let mut s = self.state.lock();
        if !Self::covered(&s, &range) {
            s.trace
                .push(format!("[{}] {verb} {range:#x?}: not mapped", me()));
            return Err(MmError::Gone);
        }
        if let Some(limit) = s.resident_limit {
            let new = range
                .clone()
                .step_by(PAGE_SIZE)
                .filter(|&p| !s.resident.contains(&(map.region, map.offset_of(p))))
                .count();
            if s.resident.len() + new > limit {
                s.trace.push(format!(
                    "[{}] {verb} {range:#x?}: {new} more resident pages would pass the limit",
                    me()
                ));
                return Err(MmError::OverLimit);
            }
        }
        let mut end = range.end;
        let injected = std::mem::take(&mut s.fail_next_fill);
        if injected {
            end = range.start + (range.end - range.start) / 2 / PAGE_SIZE * PAGE_SIZE;
        }
        let mut mapped = 0;
        for page in (range.start..end).step_by(PAGE_SIZE) {
            if let Some(pte) = s.ptes.get(&page).copied() {
                if strict {
                    let v = format!(
                        "BUG_ON(!pte_none(*pte)) in remap_pte_range: {} remaps {page:#x}, which is {pte:?}",
                        map.id
                    );
                    s.trace.push(format!("[{}] {v}", me()));
                    s.violations.push(v);
                }
                self.wake_locked(&mut s, range.start..page);
                s.trace.push(format!(
                    "[{}] {verb} {:#x}..{:#x}: {mapped} pages, stopped at present {page:#x}",
                    me(),
                    range.start,
                    range.end
                ));
                return Ok(Inserted {
                    mapped,
                    stopped_at_present: true,
                });
            }
            let mut offset = map.offset_of(page);
            s.resident.insert((map.region, offset));
            if self.mutation == Some(Mutation::WrongPfn) {
                offset += PAGE_SIZE as u64;
            }
            s.ptes.insert(page, Pte::Present { offset });
            mapped += 1;
        }
        self.wake_locked(&mut s, range.start..end);
        s.trace.push(format!(
            "[{}] {verb} {:#x}..{:#x}: {mapped} pages{}",
            me(),
            range.start,
            range.end,
            if injected {
                ", then injected failure"
            } else {
                ""
            }
        ));
        if injected {
            return Err(MmError::Injected);
        }
        Ok(Inserted {
            mapped,
            stopped_at_present: false,
        })
    }
}

impl Mm for SimMm {
    fn remap(&self, map: &MapInfo, range: Range<usize>) -> Result<(), MmError> {
        match self.fill(map, range, true)? {
            Inserted {
                mapped,
                stopped_at_present: true,
            } => Err(MmError::Exists { done: mapped }),
            _ => Ok(()),
        }
    }

    fn insert(&self, map: &MapInfo, range: Range<usize>) -> Result<Inserted, MmError> {
        self.fill(map, range, false)
    }

    fn next_resident(&self, map: &MapInfo, from: usize) -> Option<Range<usize>> {
        let s = self.state.lock();
        let resident = |page: usize| s.resident.contains(&(map.region, map.offset_of(page)));
        let start = (from.max(map.start)..map.end())
            .step_by(PAGE_SIZE)
            .find(|&p| resident(p))?;
        let end = (start..map.end())
            .step_by(PAGE_SIZE)
            .find(|&p| !resident(p))
            .unwrap_or(map.end());
        Some(start..end)
    }

    fn poison(&self, _map: &MapInfo, range: Range<usize>) -> Result<(), MmError> {
        let mut s = self.state.lock();
        // Only a registered range can be poisoned: an unmapped one, or one
        // reserved but not yet registered (a new mapping is tracked by the
        // core before it is registered), is ENOENT.
        if !Self::covered(&s, &range)
            || s.hidden
                .iter()
                .any(|h| h.start < range.end && range.start < h.end)
        {
            s.trace.push(format!(
                "[{}] poison {:#x}: not registered",
                me(),
                range.start
            ));
            return Err(MmError::Gone);
        }
        for page in range.clone().step_by(PAGE_SIZE) {
            if s.ptes.contains_key(&page) {
                s.trace.push(format!("[{}] poison {page:#x}: EEXIST", me()));
                return Err(MmError::Exists { done: 0 });
            }
        }
        for page in range.clone().step_by(PAGE_SIZE) {
            s.ptes.insert(page, Pte::Poisoned);
        }
        s.trace.push(format!(
            "[{}] poison {:#x}..{:#x}",
            me(),
            range.start,
            range.end
        ));
        self.wake_locked(&mut s, range);
        Ok(())
    }

    fn zap(&self, _map: &MapInfo, range: Range<usize>) -> Result<(), MmError> {
        let mut s = self.state.lock();
        let pages: Vec<usize> = s.ptes.range(range.clone()).map(|(a, _)| *a).collect();
        for p in &pages {
            s.ptes.remove(p);
        }
        s.trace.push(format!(
            "[{}] zap {:#x}..{:#x}: {} entries",
            me(),
            range.start,
            range.end,
            pages.len()
        ));
        Ok(())
    }

    fn wake(&self, _space: SpaceId, range: Range<usize>) {
        let mut s = self.state.lock();
        s.trace.push(format!("[{}] wake {:#x}", me(), range.start));
        self.wake_locked(&mut s, range);
    }

    fn unmap(&self, _map: &MapInfo, range: Range<usize>) -> Result<(), MmError> {
        let mut s = self.state.lock();
        let Some((&start, &end)) = s.vmas.range(..=range.start).next_back() else {
            return Err(MmError::Gone);
        };
        if range.end > end {
            return Err(MmError::Gone);
        }
        s.vmas.remove(&start);
        if start < range.start {
            s.vmas.insert(start, range.start);
        }
        if range.end < end {
            s.vmas.insert(range.end, end);
        }
        let pages: Vec<usize> = s.ptes.range(range.clone()).map(|(a, _)| *a).collect();
        for p in pages {
            s.ptes.remove(&p);
        }
        s.free.push(range.clone());
        s.trace.push(format!(
            "[{}] munmap {:#x}..{:#x}",
            me(),
            range.start,
            range.end
        ));
        Ok(())
    }
}
