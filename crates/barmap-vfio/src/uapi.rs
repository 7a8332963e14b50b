//! The VFIO user-space ABI (include/uapi/linux/vfio.h) used here, taken
//! from rust-vmm's `vfio-bindings` (bindgen output of the kernel header):
//! the structures and flag values are the crate's, re-exported under the
//! names the workspace uses (`VfioRegionInfo` for `vfio_region_info`, ...),
//! with the integer type each use site wants.
//!
//! Kept here because `vfio-bindings` lacks them, one line each:
//! - the ioctl numbers: bindgen cannot translate the `_IO()` macros, so the
//!   crate has none; they are computed below as `_IO(VFIO_TYPE, VFIO_BASE + n)`
//!   from the crate's `VFIO_TYPE`, `VFIO_BASE` and `_IOC_*` constants, and a
//!   unit test checks each against the kernel's value.
//! - [`VfioIrqSet`] and [`VfioDmaUnmap`]: the crate's `vfio_irq_set` and
//!   `vfio_iommu_type1_dma_unmap` end in a flexible array member, which makes
//!   them neither `Copy` nor `Clone`; these are their fixed heads, and a unit
//!   test checks that size and every field offset equal the crate's.
//! - [`VFIO_PCI_OFFSET_SHIFT`]: vfio-pci's offset encoding lives in the
//!   kernel-internal `vfio_pci_core.h`, not in the uAPI.
//! - [`PCI_COMMAND`], [`PCI_COMMAND_MEMORY`]: PCI config space
//!   (`pci_regs.h`), not VFIO.
//!
//! The crate's `vfio_device_bind_iommufd` and `vfio_device_attach_iommufd_pt`
//! are the current, longest versions (with `token_uuid_ptr` and `pasid`); a
//! caller that speaks the first version sets `argsz` to 16 and 12.

use vfio_bindings::bindings::vfio as b;

/// `_IOC(dir, ty, nr, size)`, from the `_IOC_*` layout in the bindings.
pub(crate) const fn ioc(dir: u32, ty: u8, nr: u32, size: usize) -> libc::c_ulong {
    ((dir << b::_IOC_DIRSHIFT)
        | ((ty as u32) << b::_IOC_TYPESHIFT)
        | (nr << b::_IOC_NRSHIFT)
        | ((size as u32) << b::_IOC_SIZESHIFT)) as libc::c_ulong
}

/// `_IO(VFIO_TYPE, VFIO_BASE + nr)`: VFIO's ioctls carry no size or
/// direction bits (the structures say their own size in `argsz`).
const fn vfio_io(nr: u32) -> libc::c_ulong {
    ioc(b::_IOC_NONE, b::VFIO_TYPE, b::VFIO_BASE + nr, 0)
}

/// The API version this client speaks (`VFIO_API_VERSION`).
pub const VFIO_API_VERSION: i32 = b::VFIO_API_VERSION as i32;
/// Container: `VFIO_GET_API_VERSION`.
pub const VFIO_GET_API_VERSION: libc::c_ulong = vfio_io(0);
/// Container: `VFIO_CHECK_EXTENSION`.
pub const VFIO_CHECK_EXTENSION: libc::c_ulong = vfio_io(1);
/// Container: `VFIO_SET_IOMMU`.
pub const VFIO_SET_IOMMU: libc::c_ulong = vfio_io(2);
/// Group: `VFIO_GROUP_GET_STATUS`.
pub const VFIO_GROUP_GET_STATUS: libc::c_ulong = vfio_io(3);
/// Group: `VFIO_GROUP_SET_CONTAINER`.
pub const VFIO_GROUP_SET_CONTAINER: libc::c_ulong = vfio_io(4);
/// Group: `VFIO_GROUP_UNSET_CONTAINER`.
pub const VFIO_GROUP_UNSET_CONTAINER: libc::c_ulong = vfio_io(5);
/// Group: `VFIO_GROUP_GET_DEVICE_FD`.
pub const VFIO_GROUP_GET_DEVICE_FD: libc::c_ulong = vfio_io(6);
/// Device: `VFIO_DEVICE_GET_INFO`.
pub const VFIO_DEVICE_GET_INFO: libc::c_ulong = vfio_io(7);
/// Device: `VFIO_DEVICE_GET_REGION_INFO`.
pub const VFIO_DEVICE_GET_REGION_INFO: libc::c_ulong = vfio_io(8);
/// Device: `VFIO_DEVICE_GET_IRQ_INFO`.
pub const VFIO_DEVICE_GET_IRQ_INFO: libc::c_ulong = vfio_io(9);
/// Device: `VFIO_DEVICE_SET_IRQS`.
pub const VFIO_DEVICE_SET_IRQS: libc::c_ulong = vfio_io(10);
/// Device: `VFIO_DEVICE_RESET`.
pub const VFIO_DEVICE_RESET: libc::c_ulong = vfio_io(11);
/// Container: `VFIO_IOMMU_GET_INFO`.
pub const VFIO_IOMMU_GET_INFO: libc::c_ulong = vfio_io(12);
/// Device: `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO` (same number as
/// `VFIO_IOMMU_GET_INFO`, on a device fd).
pub const VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: libc::c_ulong = vfio_io(12);
/// Container: `VFIO_IOMMU_MAP_DMA`.
pub const VFIO_IOMMU_MAP_DMA: libc::c_ulong = vfio_io(13);
/// Container: `VFIO_IOMMU_UNMAP_DMA`.
pub const VFIO_IOMMU_UNMAP_DMA: libc::c_ulong = vfio_io(14);
/// Device: `VFIO_DEVICE_FEATURE`.
pub const VFIO_DEVICE_FEATURE: libc::c_ulong = vfio_io(17);
/// Device (cdev): `VFIO_DEVICE_BIND_IOMMUFD`.
pub const VFIO_DEVICE_BIND_IOMMUFD: libc::c_ulong = vfio_io(18);
/// Device (cdev): `VFIO_DEVICE_ATTACH_IOMMUFD_PT`.
pub const VFIO_DEVICE_ATTACH_IOMMUFD_PT: libc::c_ulong = vfio_io(19);
/// Device (cdev): `VFIO_DEVICE_DETACH_IOMMUFD_PT`.
pub const VFIO_DEVICE_DETACH_IOMMUFD_PT: libc::c_ulong = vfio_io(20);

/// IOMMU model: type1.
pub const VFIO_TYPE1_IOMMU: libc::c_ulong = b::VFIO_TYPE1_IOMMU as libc::c_ulong;
/// IOMMU model: type1 v2 (preferred).
pub const VFIO_TYPE1V2_IOMMU: libc::c_ulong = b::VFIO_TYPE1v2_IOMMU as libc::c_ulong;
/// Extension: DMA is cache coherent (`VFIO_DMA_CC_IOMMU`).
pub const VFIO_DMA_CC_IOMMU: libc::c_ulong = b::VFIO_DMA_CC_IOMMU as libc::c_ulong;
/// Extension: no-IOMMU mode (`VFIO_NOIOMMU_IOMMU`).
pub const VFIO_NOIOMMU_IOMMU: libc::c_ulong = b::VFIO_NOIOMMU_IOMMU as libc::c_ulong;
/// Extension: unmap of everything (`VFIO_UNMAP_ALL`).
pub const VFIO_UNMAP_ALL: libc::c_ulong = b::VFIO_UNMAP_ALL as libc::c_ulong;
/// Extension: vaddr update (`VFIO_UPDATE_VADDR`).
pub const VFIO_UPDATE_VADDR: libc::c_ulong = b::VFIO_UPDATE_VADDR as libc::c_ulong;

/// Capability id: sparse mmap areas.
pub const VFIO_REGION_INFO_CAP_SPARSE_MMAP: u16 = b::VFIO_REGION_INFO_CAP_SPARSE_MMAP as u16;
/// Capability id: region type and subtype.
pub const VFIO_REGION_INFO_CAP_TYPE: u16 = b::VFIO_REGION_INFO_CAP_TYPE as u16;
/// Capability id: the MSI-X table may be mmapped.
pub const VFIO_REGION_INFO_CAP_MSIX_MAPPABLE: u16 = b::VFIO_REGION_INFO_CAP_MSIX_MAPPABLE as u16;
/// IOMMU info capability: usable IOVA ranges.
pub const VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE: u16 =
    b::VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE as u16;
/// IOMMU info capability: how many DMA mappings are still available.
pub const VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL: u16 = b::VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL as u16;

// Flags and indices, with the bindings' own (u32) type.
pub use b::{
    VFIO_DEVICE_FLAGS_CAPS, VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_DMA_MAP_FLAG_READ,
    VFIO_DMA_MAP_FLAG_VADDR, VFIO_DMA_MAP_FLAG_WRITE, VFIO_DMA_UNMAP_FLAG_ALL,
    VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, VFIO_DMA_UNMAP_FLAG_VADDR,
    VFIO_GROUP_FLAGS_CONTAINER_SET, VFIO_GROUP_FLAGS_VIABLE, VFIO_IOMMU_INFO_CAPS,
    VFIO_IOMMU_INFO_PGSIZES, VFIO_IRQ_INFO_AUTOMASKED, VFIO_IRQ_INFO_EVENTFD,
    VFIO_IRQ_INFO_MASKABLE, VFIO_IRQ_INFO_NORESIZE, VFIO_IRQ_SET_ACTION_MASK,
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_TYPE_MASK, VFIO_IRQ_SET_ACTION_UNMASK,
    VFIO_IRQ_SET_DATA_BOOL, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
    VFIO_IRQ_SET_DATA_TYPE_MASK, VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_PCI_ERR_IRQ_INDEX, VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_NUM_IRQS, VFIO_PCI_NUM_REGIONS, VFIO_PCI_REQ_IRQ_INDEX,
    VFIO_PCI_ROM_REGION_INDEX, VFIO_REGION_INFO_FLAG_CAPS, VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};

/// vfio-pci encodes the region index at this bit of the file offset. Used
/// only to ask the kernel to mmap a region that region-info does not know,
/// so that the kernel's own validation answers.
pub const VFIO_PCI_OFFSET_SHIFT: u32 = 40;

/// PCI config space: the COMMAND register.
pub const PCI_COMMAND: u64 = 0x04;
/// COMMAND bit: memory space decoding enabled.
pub const PCI_COMMAND_MEMORY: u16 = 0x2;

/// `struct vfio_group_status`.
pub type VfioGroupStatus = b::vfio_group_status;
/// `struct vfio_device_info`.
pub type VfioDeviceInfo = b::vfio_device_info;
/// `struct vfio_region_info`.
pub type VfioRegionInfo = b::vfio_region_info;
/// `struct vfio_irq_info`.
pub type VfioIrqInfo = b::vfio_irq_info;
/// `struct vfio_iommu_type1_info`.
pub type VfioIommuType1Info = b::vfio_iommu_type1_info;
/// `struct vfio_iommu_type1_dma_map`.
pub type VfioDmaMap = b::vfio_iommu_type1_dma_map;
/// `struct vfio_device_bind_iommufd` (with `token_uuid_ptr`).
pub type VfioDeviceBindIommufd = b::vfio_device_bind_iommufd;
/// `struct vfio_device_attach_iommufd_pt` (with `pasid`).
pub type VfioDeviceAttachIommufdPt = b::vfio_device_attach_iommufd_pt;

/// Size of `struct vfio_region_info` (the capability chain starts after it).
pub const REGION_INFO_SIZE: usize = std::mem::size_of::<VfioRegionInfo>();
/// Size of `struct vfio_info_cap_header`.
pub const CAP_HEADER_SIZE: usize = std::mem::size_of::<b::vfio_info_cap_header>();

/// `struct vfio_irq_set` without its trailing data (see the module doc).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct VfioIrqSet {
    /// Size of the structure and its data.
    pub argsz: u32,
    /// `VFIO_IRQ_SET_*`.
    pub flags: u32,
    /// IRQ index.
    pub index: u32,
    /// First vector.
    pub start: u32,
    /// Number of vectors.
    pub count: u32,
}

/// `struct vfio_iommu_type1_dma_unmap` without its trailing data (see the
/// module doc).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct VfioDmaUnmap {
    /// Size of the structure.
    pub argsz: u32,
    /// `VFIO_DMA_UNMAP_FLAG_*`.
    pub flags: u32,
    /// IO virtual address.
    pub iova: u64,
    /// Bytes (on return: bytes unmapped).
    pub size: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    /// The numbers the kernel's `_IO()` macros give (include/uapi/linux/vfio.h,
    /// evaluated by the C compiler against the header).
    #[test]
    fn ioctl_numbers_are_the_kernels() {
        let want: &[(libc::c_ulong, libc::c_ulong)] = &[
            (VFIO_GET_API_VERSION, 0x3b64),
            (VFIO_CHECK_EXTENSION, 0x3b65),
            (VFIO_SET_IOMMU, 0x3b66),
            (VFIO_GROUP_GET_STATUS, 0x3b67),
            (VFIO_GROUP_SET_CONTAINER, 0x3b68),
            (VFIO_GROUP_UNSET_CONTAINER, 0x3b69),
            (VFIO_GROUP_GET_DEVICE_FD, 0x3b6a),
            (VFIO_DEVICE_GET_INFO, 0x3b6b),
            (VFIO_DEVICE_GET_REGION_INFO, 0x3b6c),
            (VFIO_DEVICE_GET_IRQ_INFO, 0x3b6d),
            (VFIO_DEVICE_SET_IRQS, 0x3b6e),
            (VFIO_DEVICE_RESET, 0x3b6f),
            (VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, 0x3b70),
            (VFIO_IOMMU_GET_INFO, 0x3b70),
            (VFIO_IOMMU_MAP_DMA, 0x3b71),
            (VFIO_IOMMU_UNMAP_DMA, 0x3b72),
            (VFIO_DEVICE_FEATURE, 0x3b75),
            (VFIO_DEVICE_BIND_IOMMUFD, 0x3b76),
            (VFIO_DEVICE_ATTACH_IOMMUFD_PT, 0x3b77),
            (VFIO_DEVICE_DETACH_IOMMUFD_PT, 0x3b78),
        ];
        for (i, &(got, kernel)) in want.iter().enumerate() {
            assert_eq!(got, kernel, "entry {i}: {got:#x} != {kernel:#x}");
        }
    }

    /// `_IOC` puts direction, size, type and number where asm-generic's
    /// ioctl.h does: `_IOWR('U', 1, 16)` is 0xc0105501.
    #[test]
    fn ioc_matches_the_generic_layout() {
        assert_eq!(ioc(b::_IOC_READ | b::_IOC_WRITE, b'U', 1, 16), 0xc010_5501);
        assert_eq!(ioc(b::_IOC_WRITE, b';', 0x80, 8), 0x4008_3b80);
    }

    #[test]
    fn kept_heads_have_the_bindings_layout() {
        assert_eq!(size_of::<VfioIrqSet>(), size_of::<b::vfio_irq_set>());
        assert_eq!(
            offset_of!(VfioIrqSet, argsz),
            offset_of!(b::vfio_irq_set, argsz)
        );
        assert_eq!(
            offset_of!(VfioIrqSet, flags),
            offset_of!(b::vfio_irq_set, flags)
        );
        assert_eq!(
            offset_of!(VfioIrqSet, index),
            offset_of!(b::vfio_irq_set, index)
        );
        assert_eq!(
            offset_of!(VfioIrqSet, start),
            offset_of!(b::vfio_irq_set, start)
        );
        assert_eq!(
            offset_of!(VfioIrqSet, count),
            offset_of!(b::vfio_irq_set, count)
        );
        assert_eq!(offset_of!(b::vfio_irq_set, data), 20);

        type U = b::vfio_iommu_type1_dma_unmap;
        assert_eq!(size_of::<VfioDmaUnmap>(), size_of::<U>());
        assert_eq!(offset_of!(VfioDmaUnmap, argsz), offset_of!(U, argsz));
        assert_eq!(offset_of!(VfioDmaUnmap, flags), offset_of!(U, flags));
        assert_eq!(offset_of!(VfioDmaUnmap, iova), offset_of!(U, iova));
        assert_eq!(offset_of!(VfioDmaUnmap, size), offset_of!(U, size));
        assert_eq!(offset_of!(U, data), 24);
    }

    #[test]
    fn sizes_are_the_uapis() {
        assert_eq!(REGION_INFO_SIZE, 32);
        assert_eq!(CAP_HEADER_SIZE, 8);
        assert_eq!(size_of::<VfioDeviceBindIommufd>(), 24);
        assert_eq!(size_of::<VfioDeviceAttachIommufdPt>(), 16);
    }
}
