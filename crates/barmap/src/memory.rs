//! Device memory: BAR sizes, memory committed on demand, and the limit on
//! what is committed.
//!
//! A device's memory BARs live in one shmem memfd that starts as a hole
//! ([`crate::os::memfd_sparse`]). A page of it is committed (allocated with
//! `fallocate`) right before the fault path first maps it, or before a
//! region write reaches it: a 1 TiB BAR that a program touches in a few
//! places costs those places. `UFFDIO_CONTINUE` cannot map a hole (EFAULT),
//! so the backend commits the range of each fill first ([`Store::commit`]),
//! under the store's lock, which also makes the count exact.
//!
//! What is committed is charged to a [`MemoryBudget`]: by default the
//! process's ([`MemoryBudget::process`], half of the machine's
//! `MemAvailable` when the first device is built), or one a
//! [`crate::DeviceBuilder`] names. A commit that would pass the limit is
//! refused: at build time with [`Error::MemoryLimit`], at fault time with
//! SIGBUS (counted in [`crate::Stats::over_limit`]), in a region write with
//! [`Error::MemoryLimit`]. The machine is never asked for more.

use std::collections::BTreeMap;
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::{Error, Result};
use crate::mm::{HUGE_SIZE, PAGE_SIZE};

/// The smallest memory BAR: 16 bytes, the PCI minimum (the low four bits of
/// a memory BAR register are flags). A BAR smaller than a page is mapped as
/// one page, as vfio-pci does; its memfd range is a page.
pub const MIN_BAR_SIZE: u64 = 16;
/// The largest 32-bit memory BAR: 2 GiB, the largest power of two that fits
/// below 4 GiB beside anything else.
pub const MAX_BAR32_SIZE: u64 = 1 << 31;
/// The largest 64-bit memory BAR barmap emulates: 64 TiB (2^46), half of
/// the 47-bit user address space of x86-64 with 4-level page tables, so that
/// a mapping of the whole BAR still fits beside the program. (PCI allows
/// 2^63; shmem files reach 2^63 - 1 bytes; the address space is the bound.)
pub const MAX_BAR64_SIZE: u64 = 1 << 46;

/// Checks a memory BAR's size: a power of two of at least
/// [`MIN_BAR_SIZE`], and at most [`MAX_BAR32_SIZE`] for a 32-bit BAR or
/// [`MAX_BAR64_SIZE`] for a 64-bit one.
pub fn check_bar_size(region: u32, size: u64, bits64: bool) -> Result<()> {
    if !size.is_power_of_two() || size < MIN_BAR_SIZE {
        return Err(Error::BarSizeNotPowerOfTwo { region, size });
    }
    let (bits, max) = if bits64 {
        (64, MAX_BAR64_SIZE)
    } else {
        (32, MAX_BAR32_SIZE)
    };
    if size > max {
        return Err(Error::BarTooLarge {
            region,
            size,
            bits,
            max,
        });
    }
    Ok(())
}

/// `bytes` in the largest binary unit that divides it (`64 MiB`, `1 TiB`),
/// else in bytes.
pub fn human(bytes: u64) -> String {
    for (shift, unit) in [
        (50, "PiB"),
        (40, "TiB"),
        (30, "GiB"),
        (20, "MiB"),
        (10, "KiB"),
    ] {
        if bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

/// A limit on committed device memory, shared by the devices charged to it.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: AtomicU64,
    committed: AtomicU64,
}

/// The default limit when `MemAvailable` cannot be read: 1 GiB.
const FALLBACK_LIMIT: u64 = 1 << 30;

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            limit: AtomicU64::new(limit),
            committed: AtomicU64::new(0),
        })
    }

    /// The process's budget, which every device uses unless its builder
    /// names another: [`MemoryBudget::default_limit`] bytes, measured when
    /// it is first used.
    pub fn process() -> Arc<MemoryBudget> {
        static PROCESS: OnceLock<Arc<MemoryBudget>> = OnceLock::new();
        PROCESS
            .get_or_init(|| MemoryBudget::new(Self::default_limit()))
            .clone()
    }

    /// Half of the machine's `MemAvailable` now (1 GiB if it cannot be
    /// read): device memory may take half of what the machine can give
    /// without swapping or reclaiming, and the rest stays for the program
    /// and everything else.
    pub fn default_limit() -> u64 {
        crate::os::mem_available().map_or(FALLBACK_LIMIT, |a| a / 2)
    }

    /// The limit, bytes.
    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Changes the limit. Memory already committed stays; past the new
    /// limit only new commits are refused.
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Bytes committed now by the devices charged to this budget.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    /// Charges `bytes`, or fails with [`Error::MemoryLimit`] and charges
    /// nothing.
    fn charge(&self, bytes: u64) -> Result<()> {
        let mut cur = self.committed.load(Ordering::Relaxed);
        loop {
            let limit = self.limit();
            if cur.checked_add(bytes).is_none_or(|n| n > limit) {
                return Err(Error::MemoryLimit {
                    needed: bytes,
                    committed: cur,
                    limit,
                });
            }
            match self.committed.compare_exchange_weak(
                cur,
                cur + bytes,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(now) => cur = now,
            }
        }
    }

    fn uncharge(&self, bytes: u64) {
        self.committed.fetch_sub(bytes, Ordering::Relaxed);
    }
}

const PAGE_SHIFT: u32 = PAGE_SIZE.trailing_zeros();
const PAGES_PER_BLOCK: u64 = (HUGE_SIZE / PAGE_SIZE) as u64;

/// Which pages of a store are committed: per 2 MiB block that has any, a
/// bit per 4 KiB page.
type PageMap = BTreeMap<u64, [u64; (PAGES_PER_BLOCK / 64) as usize]>;

/// The first page in `page..end` whose bit is `want`, or `end`: a word of
/// 64 pages at a time, a missing block at once.
fn find(map: &PageMap, mut page: u64, end: u64, want: bool) -> u64 {
    while page < end {
        let block = page / PAGES_PER_BLOCK;
        match map.get(&block) {
            None if !want => return page,
            None => match map.range(block + 1..).next() {
                Some((&next, _)) => page = next * PAGES_PER_BLOCK,
                None => return end,
            },
            Some(bits) => {
                let i = page % PAGES_PER_BLOCK;
                let word = bits[(i / 64) as usize];
                let word = if want { word } else { !word } >> (i % 64);
                if word != 0 {
                    return (page + u64::from(word.trailing_zeros())).min(end);
                }
                page = (page / 64 + 1) * 64;
            }
        }
    }
    end
}

/// Sets the bits of `pages` (a range of pages being committed, which the
/// budget bounds).
fn set(map: &mut PageMap, pages: Range<u64>) {
    for page in pages {
        let bit = page % PAGES_PER_BLOCK;
        let block = map.entry(page / PAGES_PER_BLOCK).or_default();
        block[(bit / 64) as usize] |= 1 << (bit % 64);
    }
}

/// Clears the bits of `pages` and returns how many were set; visits only
/// the blocks that have any.
fn clear(map: &mut PageMap, pages: Range<u64>) -> u64 {
    let blocks = pages.start / PAGES_PER_BLOCK..pages.end.div_ceil(PAGES_PER_BLOCK);
    let keys: Vec<u64> = map.range(blocks).map(|(k, _)| *k).collect();
    let mut cleared = 0;
    for k in keys {
        let bits = map.get_mut(&k).expect("listed");
        let base = k * PAGES_PER_BLOCK;
        for i in 0..PAGES_PER_BLOCK {
            if pages.contains(&(base + i)) && bits[(i / 64) as usize] & (1 << (i % 64)) != 0 {
                bits[(i / 64) as usize] &= !(1 << (i % 64));
                cleared += 1;
            }
        }
        if bits.iter().all(|w| *w == 0) {
            map.remove(&k);
        }
    }
    cleared
}

/// Runs of uncommitted pages in `pages`.
fn holes(map: &PageMap, pages: Range<u64>) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    let mut page = pages.start;
    while page < pages.end {
        let start = find(map, page, pages.end, false);
        if start >= pages.end {
            break;
        }
        let end = find(map, start, pages.end, true);
        out.push(start..end);
        page = end;
    }
    out
}

/// A shmem memfd whose pages are committed on demand and charged to a
/// budget; what it committed is given back to the budget when it is
/// dropped (with the memfd, once no mapping holds it).
#[derive(Debug)]
pub struct Store {
    fd: Arc<OwnedFd>,
    budget: Arc<MemoryBudget>,
    /// Committed pages; held across each commit's `fallocate`, which shmem
    /// serialises per file anyway (the inode lock).
    pages: Mutex<PageMap>,
    committed: AtomicU64,
}

impl Store {
    /// A store of `size` bytes, all of it a hole.
    pub fn new(name: &str, size: u64, budget: Arc<MemoryBudget>) -> Result<Store> {
        let fd = crate::os::memfd_sparse(name, size).map_err(Error::os("memfd for BAR memory"))?;
        Ok(Store {
            fd: Arc::new(fd),
            budget,
            pages: Mutex::new(PageMap::new()),
            committed: AtomicU64::new(0),
        })
    }

    /// The memfd.
    pub fn fd(&self) -> &Arc<OwnedFd> {
        &self.fd
    }

    /// Bytes committed by this store.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    /// The budget it is charged to.
    pub fn budget(&self) -> &Arc<MemoryBudget> {
        &self.budget
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PageMap> {
        self.pages.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Commits the pages of `range` (file offsets; widened to whole pages)
    /// that are not yet: charges them to the budget, then allocates them.
    /// Fails with [`Error::MemoryLimit`] (nothing committed) if the budget
    /// cannot take them all, or [`Error::Os`] if the kernel refuses.
    pub fn commit(&self, range: Range<u64>) -> Result<()> {
        if range.start >= range.end {
            return Ok(());
        }
        let pages = range.start >> PAGE_SHIFT..range.end.div_ceil(PAGE_SIZE as u64);
        let mut map = self.lock();
        let holes = holes(&map, pages);
        let needed: u64 = holes.iter().map(|h| (h.end - h.start) << PAGE_SHIFT).sum();
        if needed == 0 {
            return Ok(());
        }
        self.budget.charge(needed)?;
        for (i, h) in holes.iter().enumerate() {
            let (at, len) = (h.start << PAGE_SHIFT, (h.end - h.start) << PAGE_SHIFT);
            if let Err(errno) = crate::os::allocate(&self.fd, at, len) {
                // shmem gave back what this call allocated; the earlier
                // holes stay committed.
                let undone: u64 = holes[i..]
                    .iter()
                    .map(|h| (h.end - h.start) << PAGE_SHIFT)
                    .sum();
                self.budget.uncharge(undone);
                self.committed.fetch_add(needed - undone, Ordering::Relaxed);
                return Err(Error::Os {
                    op: "fallocate of BAR memory",
                    errno,
                });
            }
            set(&mut map, h.clone());
        }
        self.committed.fetch_add(needed, Ordering::Relaxed);
        Ok(())
    }

    /// Allocates `range` again without charging it: its pages are counted
    /// as committed, but the kernel lost them (the process punched a hole
    /// through a mapping, with `MADV_REMOVE`).
    pub fn recommit(&self, range: Range<u64>) -> Result<(), i32> {
        let _map = self.lock();
        crate::os::allocate(&self.fd, range.start, range.end - range.start)
    }

    /// Frees `range` (whole pages; no mapping may hold them) and gives its
    /// committed pages back to the budget.
    pub fn punch(&self, range: Range<u64>) -> Result<()> {
        let pages = range.start >> PAGE_SHIFT..range.end.div_ceil(PAGE_SIZE as u64);
        let mut map = self.lock();
        crate::os::punch(
            &self.fd,
            pages.start << PAGE_SHIFT,
            (pages.end - pages.start) << PAGE_SHIFT,
        )
        .map_err(Error::os("punching BAR memory"))?;
        let freed = clear(&mut map, pages) * PAGE_SIZE as u64;
        self.committed.fetch_sub(freed, Ordering::Relaxed);
        self.budget.uncharge(freed);
        Ok(())
    }

    /// The first run of committed bytes in `range` (file offsets, whole
    /// pages), if any.
    pub fn next_committed(&self, range: Range<u64>) -> Option<Range<u64>> {
        self.next_committed_within(range, u64::MAX)
    }

    /// [`Store::next_committed`], but a run is reported no longer than
    /// `max_len` bytes (whole pages): what is past that is asked for again
    /// from the run's end. The search for the run's end then costs a few
    /// words, not a walk to the end of a large committed range.
    pub fn next_committed_within(&self, range: Range<u64>, max_len: u64) -> Option<Range<u64>> {
        let map = self.lock();
        let (first, end) = (range.start >> PAGE_SHIFT, range.end >> PAGE_SHIFT);
        let start = find(&map, first, end, true);
        if start >= end {
            return None;
        }
        let cap = start
            .saturating_add((max_len >> PAGE_SHIFT).max(1))
            .min(end);
        let stop = find(&map, start, cap, false);
        Some(start << PAGE_SHIFT..stop << PAGE_SHIFT)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.budget.uncharge(self.committed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_and_runs_follow_the_page_map() {
        let mut map = PageMap::new();
        set(&mut map, 3..5);
        set(&mut map, 510..515);
        set(&mut map, 2000..2100);
        assert_eq!(holes(&map, 0..8), vec![0..3, 5..8]);
        assert_eq!(holes(&map, 500..1100), vec![500..510, 515..1100]);
        assert_eq!(holes(&map, 1990..2200), vec![1990..2000, 2100..2200]);
        assert!(holes(&map, 511..514).is_empty());
        assert_eq!(find(&map, 0, 1 << 40, true), 3);
        assert_eq!(find(&map, 515, 1 << 40, true), 2000);
        assert_eq!(find(&map, 2000, 1 << 40, false), 2100);
        assert_eq!(find(&map, 2100, 1 << 40, true), 1 << 40);
        assert_eq!(clear(&mut map, 0..1 << 40), 2 + 5 + 100);
        assert!(map.is_empty());
        assert_eq!(holes(&map, 0..8), vec![0..8]);
    }

    #[test]
    fn a_commit_past_the_budget_commits_nothing() {
        let budget = MemoryBudget::new(64 << 10);
        let store = Store::new("t", 1 << 30, budget.clone()).unwrap();
        store.commit(0..8192).unwrap();
        store.commit(4096..12288).unwrap();
        assert_eq!(store.committed(), 12288);
        assert_eq!(budget.committed(), 12288);
        let e = store.commit(1 << 20..(1 << 20) + (64 << 10)).unwrap_err();
        assert!(
            matches!(e, Error::MemoryLimit { needed, committed: 12288, limit } if needed == 64 << 10 && limit == 64 << 10),
            "{e}"
        );
        assert_eq!(budget.committed(), 12288);
        assert_eq!(crate::os::allocated_bytes(store.fd()).unwrap(), 12288);
        assert_eq!(store.next_committed(0..1 << 30), Some(0..12288));
        assert_eq!(store.next_committed(8192..1 << 30), Some(8192..12288));
        assert_eq!(store.next_committed(12288..1 << 30), None);
        store.commit((4 << 20) - 4096..(4 << 20) + 4096).unwrap();
        assert_eq!(
            store.next_committed(12288..1 << 30),
            Some((4 << 20) - 4096..(4 << 20) + 4096)
        );
        store.punch(0..4096).unwrap();
        assert_eq!(store.committed(), 16384);
        drop(store);
        assert_eq!(budget.committed(), 0);
    }
}
