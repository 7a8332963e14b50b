//! IOMMU tables: what a container or an IOAS maps, IOVA to process memory,
//! with permissions. Device models do DMA through them (an access outside
//! them, or against their permissions, is an IOMMU fault).
//!
//! # Pinning
//!
//! The kernel pins the pages behind a DMA map at `MAP_DMA` time: from then
//! on the device reaches those pages, whatever the program does to its
//! address space. If the program unmaps the buffer and maps new memory at
//! the same address, the device still writes the old pages, and the new
//! memory stays untouched. barmap cannot pin pages from user space, so it
//! does two things, by the kind of memory:
//!
//! - **Shared memory** (memfd, `MAP_SHARED|MAP_ANONYMOUS`, shmem files,
//!   any `MAP_SHARED` mapping): pinning is emulated exactly. At map time
//!   barmap makes a second mapping of the same pages (`mremap` with an old
//!   size of 0, which the kernel allows for shared mappings only), marked
//!   `MADV_DONTFORK`, and the device's DMA goes through it until the DMA
//!   unmap. The program may unmap, remap or move its own mapping; the
//!   device keeps reaching the pages it was given, as with the kernel.
//! - **Private memory** (anonymous `MAP_PRIVATE`, malloc, private file
//!   mappings): there is no second mapping of private pages to be had,
//!   so barmap translates through the program's address and watches it.
//!   When the program's `munmap` covers part of a DMA-mapped range, that
//!   range is marked gone, and device DMA to it is an IOMMU fault
//!   ([`barmap_models::IommuFault::Gone`], counted in the device's stats
//!   and in the run's report), never a write into whatever memory is
//!   mapped there next. What barmap does not see: an unmap inside libc
//!   (a `free` that returns a large chunk), a raw `munmap` system call, and
//!   a `mmap(MAP_FIXED)` or `mremap` over the buffer without a `munmap`;
//!   DMA then reaches the new memory. Programs that need the kernel's
//!   exact behaviour in those cases map DMA buffers from shared memory, as
//!   QEMU and DPDK do for guest memory and hugepages.
//!
//! `VFIO_UPDATE_VADDR` is not offered (see [`crate::type1::has_extension`]):
//! its promise (the device keeps using the pinned pages while no vaddr is
//! valid) holds only for pinned memory.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Page size of the emulated IOMMU.
pub const IOMMU_PAGE: u64 = 4096;

/// The IOVA windows the emulated IOMMU accepts (inclusive ends): everything
/// below the x86 MSI window, and above it up to 48 bits, as Intel VT-d
/// reports.
pub const IOVA_RANGES: [(u64, u64); 2] = [(0, 0xfedf_ffff), (0xfef0_0000, (1 << 48) - 1)];

/// One DMA mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaMapping {
    /// First IOVA.
    pub iova: u64,
    /// Bytes.
    pub size: u64,
    /// Process virtual address of the first byte.
    pub vaddr: u64,
    /// The device may read.
    pub read: bool,
    /// The device may write.
    pub write: bool,
}

/// Why a DMA table refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaError {
    /// A bad argument (alignment, zero size, outside the IOVA windows,
    /// splitting a mapping where that is not allowed).
    Invalid,
    /// Part of the range is already mapped.
    Exists,
    /// Nothing is mapped there.
    NotFound,
    /// The IOVA range wraps past 2^64.
    Overflow,
    /// The memory is not the process's.
    Fault,
}

/// IOVA → mapping.
#[derive(Debug, Default)]
pub struct DmaTable {
    maps: BTreeMap<u64, DmaMapping>,
    /// By mapping IOVA: how the mapping's pages are held.
    held: BTreeMap<u64, Held>,
}

/// How the pages of one mapping are held.
#[derive(Debug)]
enum Held {
    /// Shared memory, pinned by a second mapping of the same pages.
    Pinned(Alias),
    /// Private memory, reached at the program's address and watched for
    /// unmaps.
    Watched(Watch),
    /// A BAR mapping (type1 maps pfnmaps): reached at the program's
    /// address, where barmap's fault path serves it.
    Mmio,
}

/// A second mapping of a shared range's pages, made at DMA map time.
#[derive(Debug)]
struct Alias {
    addr: usize,
    len: usize,
}

impl Drop for Alias {
    fn drop(&mut self) {
        // SAFETY: our own mapping, made by `Alias::of`; nothing else uses it.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

impl Alias {
    /// A second mapping of `vaddr..vaddr+len`, all of it shared memory
    /// (`segments`: the program's mappings that cover it, in order), or
    /// None if the kernel refuses one of them.
    fn of(vaddr: u64, len: u64, segments: &[(u64, u64)]) -> Option<Alias> {
        let len = len as usize;
        // SAFETY: a fresh anonymous reservation, placed by the kernel.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let alias = Alias {
            addr: base as usize,
            len,
        };
        for &(start, end) in segments {
            let (from, to) = (start.max(vaddr), end.min(vaddr + len as u64));
            let at = alias.addr + (from - vaddr) as usize;
            // SAFETY: mremap with an old size of 0 maps the same shared
            // pages again, here over our own reservation (MREMAP_FIXED);
            // the program's mapping is left as it is.
            let r = unsafe {
                libc::mremap(
                    from as *mut libc::c_void,
                    0,
                    (to - from) as usize,
                    libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                    at as *mut libc::c_void,
                )
            };
            if r == libc::MAP_FAILED {
                return None; // `alias` unmaps what was made
            }
        }
        // SAFETY: madvise on our own mapping: a forked child does not get
        // it (the kernel's pinned pages are not the child's either).
        unsafe { libc::madvise(base, len, libc::MADV_DONTFORK) };
        Some(alias)
    }
}

/// A private range watched for the program's unmaps.
#[derive(Debug)]
struct Watch {
    id: u64,
}

impl Drop for Watch {
    fn drop(&mut self) {
        WATCHED.lock().unwrap().retain(|w| w.id != self.id);
    }
}

/// One watched private range: its addresses and the parts unmapped since.
#[derive(Debug)]
struct Watched {
    id: u64,
    start: u64,
    end: u64,
    gone: Vec<(u64, u64)>,
}

/// Every watched range of the process (for [`process_unmapped`]).
static WATCHED: Mutex<Vec<Watched>> = Mutex::new(Vec::new());
static NEXT_WATCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Watch {
    fn new(start: u64, end: u64) -> Watch {
        let id = NEXT_WATCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        WATCHED.lock().unwrap().push(Watched {
            id,
            start,
            end,
            gone: Vec::new(),
        });
        Watch { id }
    }

    /// Whether part of `va..va+len` was unmapped by the program.
    fn gone(&self, va: u64, len: u64) -> bool {
        let end = va.saturating_add(len);
        WATCHED
            .lock()
            .unwrap()
            .iter()
            .find(|w| w.id == self.id)
            .is_some_and(|w| w.gone.iter().any(|&(s, e)| s < end && va < e))
    }
}

/// The program unmapped `addr..addr+len` (its `munmap` returned 0): the
/// private DMA-mapped memory in that range is gone, and device DMA to it
/// is an IOMMU fault from now on (shared memory stays pinned).
pub fn process_unmapped(addr: usize, len: usize) {
    let (a, e) = (addr as u64, (addr as u64).saturating_add(len as u64));
    let mut watched = WATCHED.lock().unwrap();
    for w in watched.iter_mut() {
        if w.start < e && a < w.end {
            w.gone.push((a.max(w.start), e.min(w.end)));
        }
    }
}

impl DmaTable {
    /// Every mapping, by IOVA.
    pub fn mappings(&self) -> Vec<DmaMapping> {
        self.maps.values().copied().collect()
    }

    /// Number of mappings.
    pub fn len(&self) -> usize {
        self.maps.len()
    }

    /// Whether nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.maps.is_empty()
    }

    /// Checks a map request the way the kernel does (alignment, windows,
    /// overlap, then that the memory can be pinned: mapped in the process,
    /// readable, and writable for a map the device may write) and records
    /// it, holding its pages (see the module's notes on pinning).
    pub fn map(&mut self, m: DmaMapping) -> Result<(), DmaError> {
        if m.size == 0 || m.iova % IOMMU_PAGE != 0 || m.size % IOMMU_PAGE != 0 {
            return Err(DmaError::Invalid);
        }
        if m.vaddr % IOMMU_PAGE != 0 {
            return Err(DmaError::Invalid);
        }
        let Some(last) = m.iova.checked_add(m.size - 1) else {
            return Err(DmaError::Overflow);
        };
        if m.vaddr.checked_add(m.size - 1).is_none() {
            return Err(DmaError::Overflow);
        }
        if !IOVA_RANGES
            .iter()
            .any(|&(lo, hi)| lo <= m.iova && last <= hi)
        {
            return Err(DmaError::Invalid);
        }
        if self.overlaps(m.iova, m.size) {
            return Err(DmaError::Exists);
        }
        let held = if crate::is_bar_memory(m.vaddr, m.size) {
            Held::Mmio
        } else {
            let segments = pinnable(m.vaddr, m.size, m.write).ok_or(DmaError::Fault)?;
            let shared = segments.iter().all(|s| s.2);
            let spans: Vec<(u64, u64)> = segments.iter().map(|s| (s.0, s.1)).collect();
            match shared.then(|| Alias::of(m.vaddr, m.size, &spans)).flatten() {
                Some(a) => Held::Pinned(a),
                None => Held::Watched(Watch::new(m.vaddr, m.vaddr + m.size)),
            }
        };
        self.maps.insert(m.iova, m);
        self.held.insert(m.iova, held);
        Ok(())
    }

    /// Whether any mapping meets `iova..iova+size`.
    pub fn overlaps(&self, iova: u64, size: u64) -> bool {
        let end = iova.saturating_add(size);
        if self.maps.range(iova..end).next().is_some() {
            return true;
        }
        self.maps
            .range(..iova)
            .next_back()
            .is_some_and(|(_, m)| m.iova + m.size > iova)
    }

    fn remove(&mut self, iova: u64) -> u64 {
        self.held.remove(&iova);
        self.maps.remove(&iova).map_or(0, |m| m.size)
    }

    /// type1 v1 unmap (`vfio_dma_do_unmap` without `v2`): every mapping
    /// whose first IOVA lies in `iova..iova+size` goes, whole (even where
    /// it extends past the range); if the range starts inside a mapping,
    /// nothing is unmapped. Returns the bytes unmapped.
    pub fn unmap_v1(&mut self, iova: u64, size: u64) -> u64 {
        let last = iova.saturating_add(size - 1);
        let starts_inside = self
            .maps
            .range(..iova)
            .next_back()
            .is_some_and(|(_, m)| m.iova + m.size > iova);
        if starts_inside {
            return 0;
        }
        let inside: Vec<u64> = self.maps.range(iova..=last).map(|(k, _)| *k).collect();
        inside.into_iter().map(|k| self.remove(k)).sum()
    }

    /// Unmaps every mapping inside `iova..iova+size` (a mapping that only
    /// partly overlaps is an error when `no_split`, as type1v2 and iommufd
    /// refuse to split); returns the bytes unmapped.
    pub fn unmap(&mut self, iova: u64, size: u64, no_split: bool) -> Result<u64, DmaError> {
        let end = iova.checked_add(size).ok_or(DmaError::Overflow)?;
        if no_split {
            let cut_start = self
                .maps
                .range(..iova)
                .next_back()
                .is_some_and(|(_, m)| m.iova + m.size > iova);
            let cut_end = self
                .maps
                .range(iova..end)
                .next_back()
                .is_some_and(|(_, m)| m.iova + m.size > end);
            if cut_start || cut_end {
                return Err(DmaError::Invalid);
            }
        }
        let inside: Vec<u64> = self
            .maps
            .range(iova..end)
            .filter(|(_, m)| m.iova + m.size <= end)
            .map(|(k, _)| *k)
            .collect();
        Ok(inside.into_iter().map(|k| self.remove(k)).sum())
    }

    /// Unmaps everything; returns the bytes unmapped.
    pub fn clear(&mut self) -> u64 {
        let bytes = self.maps.values().map(|m| m.size).sum();
        self.maps.clear();
        self.held.clear();
        bytes
    }

    /// Translates a DMA access of `len` bytes at `iova` (`write` for a
    /// device write): the process address, or None for an IOMMU fault
    /// (unmapped, crossing the end of a mapping, or against its
    /// permissions).
    /// A pinned mapping translates to barmap's second mapping of its
    /// pages; private memory that the program unmapped translates to
    /// nothing ([`DmaTable::is_gone`] tells that fault apart).
    pub fn translate(&self, iova: u64, len: u64, write: bool) -> Option<u64> {
        let (_, m) = self.maps.range(..=iova).next_back()?;
        let end = iova.checked_add(len)?;
        if end > m.iova + m.size || (write && !m.write) || (!write && !m.read) {
            return None;
        }
        let off = iova - m.iova;
        match self.held.get(&m.iova) {
            Some(Held::Pinned(a)) => Some(a.addr as u64 + off),
            Some(Held::Watched(w)) if w.gone(m.vaddr + off, len) => None,
            _ => Some(m.vaddr + off),
        }
    }

    /// Whether a DMA access of `len` bytes at `iova` meets private memory
    /// that the program unmapped after mapping it for DMA.
    pub fn is_gone(&self, iova: u64, len: u64) -> bool {
        let Some((_, m)) = self.maps.range(..=iova).next_back() else {
            return false;
        };
        if iova >= m.iova + m.size {
            return false;
        }
        let off = iova - m.iova;
        matches!(self.held.get(&m.iova), Some(Held::Watched(w)) if w.gone(m.vaddr + off, len))
    }

    /// A free, `align`-aligned IOVA range of `size` bytes in the windows
    /// (iommufd's automatic IOVA allocation).
    pub fn find_free(&self, size: u64, align: u64) -> Option<u64> {
        for &(lo, hi) in &IOVA_RANGES {
            let mut at = lo.max(IOMMU_PAGE).next_multiple_of(align);
            loop {
                let last = at.checked_add(size - 1)?;
                if last > hi {
                    break;
                }
                match self
                    .maps
                    .range(..at + size)
                    .next_back()
                    .filter(|(_, m)| m.iova + m.size > at)
                {
                    None => return Some(at),
                    Some((_, m)) => at = (m.iova + m.size).next_multiple_of(align),
                }
            }
        }
        None
    }
}

/// The program's mappings that cover `vaddr..vaddr+size`, as
/// `(start, end, shared)`, if the kernel could pin the range: every page
/// mapped (no hole), readable, and writable too when the device may write
/// (the kernel pins with `FOLL_WRITE` then). None means EFAULT.
fn pinnable(vaddr: u64, size: u64, write: bool) -> Option<Vec<(u64, u64, bool)>> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let end = vaddr + size;
    let mut at = vaddr;
    let mut out = Vec::new();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        let Some((s, e)) = range.split_once('-') else {
            continue;
        };
        let (Ok(s), Ok(e)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16)) else {
            continue;
        };
        if e <= at || s >= end {
            continue;
        }
        let p = perms.as_bytes();
        if s > at || p.len() < 4 || p[0] != b'r' || (write && p[1] != b'w') {
            return None;
        }
        out.push((s, e, p[3] == b's'));
        at = e;
        if at >= end {
            return Some(out);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf() -> (Vec<u8>, u64) {
        let v = vec![0u8; 8 * 4096 + 4096];
        let a = (v.as_ptr() as u64).next_multiple_of(4096);
        (v, a)
    }

    #[test]
    fn map_checks_alignment_overlap_and_windows() {
        let (_v, a) = buf();
        let mut t = DmaTable::default();
        let m = |iova, size| DmaMapping {
            iova,
            size,
            vaddr: a,
            read: true,
            write: false,
        };
        assert_eq!(t.map(m(0x1000, 0x2000)), Ok(()));
        assert_eq!(t.map(m(0x2000, 0x1000)), Err(DmaError::Exists));
        assert_eq!(t.map(m(0x1001, 0x1000)), Err(DmaError::Invalid));
        assert_eq!(t.map(m(0x10_0000, 0)), Err(DmaError::Invalid));
        assert_eq!(t.map(m(0xfee0_0000, 0x1000)), Err(DmaError::Invalid));
        assert_eq!(t.map(m(u64::MAX - 0xfff, 0x2000)), Err(DmaError::Overflow));
        assert_eq!(t.translate(0x1800, 8, false), Some(a + 0x800));
        assert_eq!(t.translate(0x1800, 8, true), None, "read-only");
        assert_eq!(t.translate(0x2ffc, 8, false), None, "crosses the end");
        assert_eq!(t.unmap(0x1000, 0x1000, true), Err(DmaError::Invalid));
        assert_eq!(t.unmap(0x0, 0x10_0000, true), Ok(0x2000));
        assert!(t.is_empty());
        let mut t = DmaTable::default();
        assert_eq!(
            t.map(DmaMapping {
                vaddr: 0x1000,
                ..m(0x1000, 0x1000)
            }),
            Err(DmaError::Fault)
        );
    }

    #[test]
    fn free_ranges_skip_mappings() {
        let (_v, a) = buf();
        let mut t = DmaTable::default();
        let at = t.find_free(0x2000, 0x1000).unwrap();
        t.map(DmaMapping {
            iova: at,
            size: 0x2000,
            vaddr: a,
            read: true,
            write: true,
        })
        .unwrap();
        let next = t.find_free(0x1000, 0x1000).unwrap();
        assert!(next >= at + 0x2000);
    }
}
