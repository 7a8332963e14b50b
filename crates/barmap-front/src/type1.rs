//! The type1 IOMMU interface (`VFIO_IOMMU_GET_INFO`, `MAP_DMA`,
//! `UNMAP_DMA`), shared by the legacy container and iommufd's VFIO
//! compatibility mode.

use std::sync::{Arc, Mutex};

use barmap_vfio::uapi as v;

use crate::dma::{DmaError, DmaMapping, DmaTable, IOMMU_PAGE, IOVA_RANGES};
use crate::{user, Errno};

/// How many DMA mappings a container allows (type1's `dma_entry_limit`).
pub const DMA_ENTRY_LIMIT: usize = 65535;

/// Whether `ext` is a `VFIO_CHECK_EXTENSION` answer of 1.
pub fn has_extension(ext: u64) -> bool {
    ext == v::VFIO_TYPE1_IOMMU
        || ext == v::VFIO_TYPE1V2_IOMMU
        || ext == v::VFIO_UNMAP_ALL
        || ext == v::VFIO_UPDATE_VADDR
}

/// `VFIO_IOMMU_GET_INFO`: page sizes, the IOVA-range and DMA-available
/// capabilities.
pub fn get_info(table: &Arc<Mutex<DmaTable>>, arg: usize) -> Result<i64, Errno> {
    const MINSZ: usize = 16;
    let mut info: v::VfioIommuType1Info = user::read_struct(arg, MINSZ)?;
    if (info.argsz as usize) < MINSZ {
        return Err(Errno::EINVAL);
    }
    info.flags = v::VFIO_IOMMU_INFO_PGSIZES;
    info.iova_pgsizes = 4096 | (2 << 20) | (1 << 30);
    let head = std::mem::size_of::<v::VfioIommuType1Info>();
    // IOVA ranges: header, nr_iovas, reserved, then {start, end} each.
    let mut caps = Vec::new();
    let range_len = 16 + 16 * IOVA_RANGES.len();
    caps.extend_from_slice(&v::VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE.to_ne_bytes());
    caps.extend_from_slice(&1u16.to_ne_bytes());
    caps.extend_from_slice(&((head + range_len) as u32).to_ne_bytes()); // next
    caps.extend_from_slice(&(IOVA_RANGES.len() as u32).to_ne_bytes());
    caps.extend_from_slice(&0u32.to_ne_bytes());
    for (lo, hi) in IOVA_RANGES {
        caps.extend_from_slice(&lo.to_ne_bytes());
        caps.extend_from_slice(&hi.to_ne_bytes());
    }
    // DMA available: header, avail.
    let avail = DMA_ENTRY_LIMIT.saturating_sub(table.lock().unwrap().len()) as u32;
    caps.extend_from_slice(&v::VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL.to_ne_bytes());
    caps.extend_from_slice(&1u16.to_ne_bytes());
    caps.extend_from_slice(&0u32.to_ne_bytes());
    caps.extend_from_slice(&avail.to_ne_bytes());
    caps.extend_from_slice(&0u32.to_ne_bytes());
    if info.argsz as usize >= MINSZ + 8 {
        info.flags |= v::VFIO_IOMMU_INFO_CAPS;
        let needed = (head + caps.len()) as u32;
        if info.argsz < needed {
            info.argsz = needed;
            info.cap_offset = 0;
        } else {
            info.cap_offset = head as u32;
            user::write(arg + head, &caps)?;
        }
    }
    user::write_struct(arg, &info, head.min(info.argsz as usize))?;
    Ok(0)
}

fn errno_of(e: DmaError) -> Errno {
    match e {
        DmaError::Invalid => Errno::EINVAL,
        DmaError::Exists => Errno::EEXIST,
        DmaError::NotFound => Errno::EINVAL,
        DmaError::Overflow => Errno::EOVERFLOW,
        DmaError::Fault => Errno::EFAULT,
    }
}

/// `VFIO_IOMMU_MAP_DMA`; `mmio_ok` says whether a BAR mapping may be
/// mapped for DMA (type1 maps pfnmaps; iommufd's compatibility mode, which
/// pins pages, cannot).
pub fn map_dma(table: &Arc<Mutex<DmaTable>>, arg: usize, mmio_ok: bool) -> Result<i64, Errno> {
    const MINSZ: usize = 32;
    let m: v::VfioDmaMap = user::read_struct(arg, MINSZ)?;
    if (m.argsz as usize) < MINSZ {
        return Err(Errno::EINVAL);
    }
    let known = v::VFIO_DMA_MAP_FLAG_READ | v::VFIO_DMA_MAP_FLAG_WRITE | v::VFIO_DMA_MAP_FLAG_VADDR;
    if m.flags & !known != 0 || m.flags & v::VFIO_DMA_MAP_FLAG_VADDR != 0 {
        return Err(Errno::EINVAL);
    }
    if !mmio_ok && crate::is_bar_memory(m.vaddr, m.size) {
        return Err(Errno::EFAULT);
    }
    let mut t = table.lock().unwrap();
    if t.len() >= DMA_ENTRY_LIMIT {
        return Err(Errno::ENOSPC);
    }
    t.map(DmaMapping {
        iova: m.iova,
        size: m.size,
        vaddr: m.vaddr,
        read: m.flags & v::VFIO_DMA_MAP_FLAG_READ != 0,
        write: m.flags & v::VFIO_DMA_MAP_FLAG_WRITE != 0,
    })
    .map_err(errno_of)?;
    Ok(0)
}

/// `VFIO_IOMMU_UNMAP_DMA`; `v2` refuses to split a mapping.
pub fn unmap_dma(table: &Arc<Mutex<DmaTable>>, arg: usize, v2: bool) -> Result<i64, Errno> {
    const MINSZ: usize = 24;
    let mut u: v::VfioDmaUnmap = user::read_struct(arg, MINSZ)?;
    if (u.argsz as usize) < MINSZ {
        return Err(Errno::EINVAL);
    }
    let known = v::VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP
        | v::VFIO_DMA_UNMAP_FLAG_ALL
        | v::VFIO_DMA_UNMAP_FLAG_VADDR;
    if u.flags & !known != 0
        || u.flags & (v::VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP | v::VFIO_DMA_UNMAP_FLAG_VADDR) != 0
    {
        return Err(Errno::EINVAL);
    }
    let mut t = table.lock().unwrap();
    let bytes = if u.flags & v::VFIO_DMA_UNMAP_FLAG_ALL != 0 {
        if u.iova != 0 || u.size != 0 {
            return Err(Errno::EINVAL);
        }
        t.clear()
    } else {
        if u.size == 0 || u.iova % IOMMU_PAGE != 0 || u.size % IOMMU_PAGE != 0 {
            return Err(Errno::EINVAL);
        }
        if u.iova.checked_add(u.size - 1).is_none() {
            return Err(Errno::EOVERFLOW);
        }
        t.unmap(u.iova, u.size, v2).map_err(errno_of)?
    };
    u.size = bytes;
    user::write_struct(arg, &u, MINSZ)?;
    Ok(0)
}
