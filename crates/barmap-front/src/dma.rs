//! IOMMU tables: what a container or an IOAS maps, IOVA to process memory,
//! with permissions. Device models do DMA through them (an access outside
//! them, or against their permissions, is an IOMMU fault).

use std::collections::BTreeMap;

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

    fn overlaps(&self, iova: u64, size: u64) -> bool {
        let end = iova + size;
        if self.maps.range(iova..end).next().is_some() {
            return true;
        }
        self.maps
            .range(..iova)
            .next_back()
            .is_some_and(|(_, m)| m.iova + m.size > iova)
    }

    /// Checks a map request the way the kernel does (alignment, windows,
    /// overlap, that the memory is mapped in the process) and records it.
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
        if !process_owns(m.vaddr, m.size) {
            return Err(DmaError::Fault);
        }
        self.maps.insert(m.iova, m);
        Ok(())
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
        let mut bytes = 0;
        for k in inside {
            bytes += self.maps.remove(&k).map_or(0, |m| m.size);
        }
        Ok(bytes)
    }

    /// Unmaps everything; returns the bytes unmapped.
    pub fn clear(&mut self) -> u64 {
        let bytes = self.maps.values().map(|m| m.size).sum();
        self.maps.clear();
        bytes
    }

    /// Translates a DMA access of `len` bytes at `iova` (`write` for a
    /// device write): the process address, or None for an IOMMU fault
    /// (unmapped, crossing the end of a mapping, or against its
    /// permissions).
    pub fn translate(&self, iova: u64, len: u64, write: bool) -> Option<u64> {
        let (_, m) = self.maps.range(..=iova).next_back()?;
        let end = iova.checked_add(len)?;
        if end > m.iova + m.size || (write && !m.write) || (!write && !m.read) {
            return None;
        }
        Some(m.vaddr + (iova - m.iova))
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

/// Whether every page of `vaddr..vaddr+size` is mapped in this process
/// (the kernel pins them; an unmapped page makes the map fail with EFAULT).
fn process_owns(vaddr: u64, size: u64) -> bool {
    let pages = size.div_ceil(IOMMU_PAGE) as usize;
    let mut vec = vec![0u8; pages];
    // SAFETY: mincore writes one byte per page of the range into `vec`,
    // which has exactly that many; it fails with ENOMEM for unmapped pages.
    let rc = unsafe { libc::mincore(vaddr as *mut libc::c_void, size as usize, vec.as_mut_ptr()) };
    rc == 0
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
