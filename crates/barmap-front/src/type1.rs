//! The type1 IOMMU interface (`VFIO_IOMMU_GET_INFO`, `MAP_DMA`,
//! `UNMAP_DMA`), shared by the legacy container and iommufd's VFIO
//! compatibility mode.

use std::sync::{Arc, Mutex};

use barmap_vfio::uapi as v;

use crate::dma::{DmaError, DmaMapping, DmaTable, IOMMU_PAGE, IOVA_RANGES};
use crate::{user, Errno};

/// How many DMA mappings a container allows (type1's `dma_entry_limit`).
pub const DMA_ENTRY_LIMIT: usize = 65535;

pub use v::VFIO_DMA_CC_IOMMU;

/// `VFIO_CHECK_EXTENSION` of type1 (`vfio_iommu_type1_check_extension`);
/// `set` says whether the container has its IOMMU driver (before that the
/// kernel asks the driver with no instance, and the answers that depend
/// on one are 0).
///
/// `VFIO_UPDATE_VADDR` is 0: barmap answers as the kernel does for a
/// container whose vaddrs cannot be updated (the kernel's case of a
/// container with emulated-IOMMU devices), because it cannot keep the
/// kernel's promise for every kind of memory: during the update the
/// device goes on using the pinned pages, and barmap holds pages only for
/// shared memory (see [`crate::dma`]). Its flags get the answers of that
/// case: EBUSY for `UNMAP_DMA` with `VADDR`, ENOENT or EINVAL for
/// `MAP_DMA` with `VADDR`.
pub fn has_extension(ext: u64, set: bool) -> bool {
    match ext {
        v::VFIO_TYPE1_IOMMU | v::VFIO_TYPE1V2_IOMMU | v::VFIO_UNMAP_ALL => true,
        // The emulated IOMMU snoops: coherent once there is a domain.
        VFIO_DMA_CC_IOMMU => set,
        _ => false,
    }
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
        DmaError::Device(e) => Errno(e),
    }
}

/// `VFIO_IOMMU_MAP_DMA`, with `vfio_iommu_type1_map_dma`'s and
/// `vfio_dma_do_map`'s checks in their order: EFAULT (the structure),
/// EINVAL (argsz, unknown flags), EINVAL (size 0), EOVERFLOW (IOVA or
/// vaddr range wraps), EINVAL (neither READ nor WRITE, or VADDR with
/// them), EINVAL (alignment), EEXIST (overlap), ENOSPC (`dma_entry_limit`),
/// EINVAL (outside the IOVA windows), EFAULT (pinning fails: memory not
/// mapped, or not readable, or not writable for a WRITE map).
///
/// `mmio_ok` says whether a BAR mapping may be mapped for DMA (type1 maps
/// pfnmaps; iommufd's compatibility mode, which pins pages, cannot).
pub fn map_dma(table: &Arc<Mutex<DmaTable>>, arg: usize, mmio_ok: bool) -> Result<i64, Errno> {
    const MINSZ: usize = 32;
    let m: v::VfioDmaMap = user::read_struct(arg, MINSZ)?;
    let known = v::VFIO_DMA_MAP_FLAG_READ | v::VFIO_DMA_MAP_FLAG_WRITE | v::VFIO_DMA_MAP_FLAG_VADDR;
    if (m.argsz as usize) < MINSZ || m.flags & !known != 0 {
        return Err(Errno::EINVAL);
    }
    if m.size == 0 {
        return Err(Errno::EINVAL);
    }
    if m.iova.checked_add(m.size - 1).is_none() || m.vaddr.checked_add(m.size - 1).is_none() {
        return Err(Errno::EOVERFLOW);
    }
    let read = m.flags & v::VFIO_DMA_MAP_FLAG_READ != 0;
    let write = m.flags & v::VFIO_DMA_MAP_FLAG_WRITE != 0;
    let set_vaddr = m.flags & v::VFIO_DMA_MAP_FLAG_VADDR != 0;
    if (read || write) == set_vaddr {
        return Err(Errno::EINVAL);
    }
    if (m.size | m.iova | m.vaddr) % IOMMU_PAGE != 0 {
        return Err(Errno::EINVAL);
    }
    let mut t = table.lock().unwrap();
    let found = t.overlaps(m.iova, m.size);
    if set_vaddr {
        // No vaddr is ever invalidated (see has_extension): a mapping
        // there is not waiting for one (EINVAL); no mapping is ENOENT.
        return Err(if found { Errno::EINVAL } else { Errno::ENOENT });
    }
    if found {
        return Err(Errno::EEXIST);
    }
    if t.len() >= DMA_ENTRY_LIMIT {
        return Err(Errno::ENOSPC);
    }
    if !mmio_ok && crate::is_bar_memory(m.vaddr, m.size) {
        return Err(Errno::EFAULT);
    }
    t.map(DmaMapping {
        iova: m.iova,
        size: m.size,
        vaddr: m.vaddr,
        read,
        write,
    })
    .map_err(errno_of)?;
    Ok(0)
}

/// `VFIO_IOMMU_UNMAP_DMA`, with `vfio_iommu_type1_unmap_dma`'s and
/// `vfio_dma_do_unmap`'s checks in their order. `v2` refuses to split a
/// mapping (EINVAL); v1 unmaps every mapping whose first IOVA is in the
/// range, whole, and nothing at all if the range starts inside a mapping
/// (success, size 0), as the kernel keeps "v1" compatibility.
pub fn unmap_dma(table: &Arc<Mutex<DmaTable>>, arg: usize, v2: bool) -> Result<i64, Errno> {
    const MINSZ: usize = 24;
    let mut u: v::VfioDmaUnmap = user::read_struct(arg, MINSZ)?;
    let dirty = v::VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP;
    let all = v::VFIO_DMA_UNMAP_FLAG_ALL;
    let vaddr = v::VFIO_DMA_UNMAP_FLAG_VADDR;
    if (u.argsz as usize) < MINSZ || u.flags & !(dirty | all | vaddr) != 0 {
        return Err(Errno::EINVAL);
    }
    if u.flags & dirty != 0 {
        if u.flags & (all | vaddr) != 0 || (u.argsz as usize) < MINSZ + 24 {
            return Err(Errno::EINVAL);
        }
        // struct vfio_bitmap { pgsize, size, data }.
        let b = user::read(arg + MINSZ, 24)?;
        let word = |i: usize| u64::from_ne_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
        let (pgsize, size, data) = (word(0), word(1), word(2));
        // access_ok, then verify_bitmap_size.
        if data.checked_add(size).is_none_or(|end| end > USER_END) {
            return Err(Errno::EINVAL);
        }
        let npages = if pgsize == 0 {
            0
        } else {
            u.size >> pgsize.trailing_zeros()
        };
        if npages == 0 || size == 0 || size < npages.div_ceil(64) * 8 {
            return Err(Errno::EINVAL);
        }
    }
    let mut t = table.lock().unwrap();
    // Cannot invalidate vaddrs (see has_extension).
    if u.flags & vaddr != 0 {
        return Err(Errno::EBUSY);
    }
    if u.iova % IOMMU_PAGE != 0 {
        return Err(Errno::EINVAL);
    }
    if u.flags & all != 0 {
        if u.iova != 0 || u.size != 0 {
            return Err(Errno::EINVAL);
        }
    } else {
        if u.size == 0 || u.size % IOMMU_PAGE != 0 {
            return Err(Errno::EINVAL);
        }
        if u.iova.checked_add(u.size - 1).is_none() {
            return Err(Errno::EOVERFLOW);
        }
    }
    // No dirty tracking was started: the bitmap request is EINVAL.
    if u.flags & dirty != 0 {
        return Err(Errno::EINVAL);
    }
    let bytes = if u.flags & all != 0 {
        t.clear()
    } else if v2 {
        t.unmap(u.iova, u.size, true).map_err(errno_of)?
    } else {
        t.unmap_v1(u.iova, u.size)
    };
    drop(t);
    u.size = bytes;
    user::write_struct(arg, &u, MINSZ)?;
    Ok(0)
}

/// The end of user space on x86-64 (`access_ok`'s limit).
const USER_END: u64 = 0x7fff_ffff_f000;
