//! The VFIO user-space ABI (include/uapi/linux/vfio.h) used here: ioctl
//! numbers, flags and the fixed-size structures. Only what barmap needs.

/// `_IO(';', 100 + nr)`: VFIO's ioctls carry no size or direction bits.
const fn vfio_io(nr: u32) -> libc::c_ulong {
    ((b';' as u32) << 8 | (100 + nr)) as libc::c_ulong
}

/// The API version this client speaks (`VFIO_API_VERSION`).
pub const VFIO_API_VERSION: i32 = 0;
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
/// Group: `VFIO_GROUP_GET_DEVICE_FD`.
pub const VFIO_GROUP_GET_DEVICE_FD: libc::c_ulong = vfio_io(6);
/// Device: `VFIO_DEVICE_GET_INFO`.
pub const VFIO_DEVICE_GET_INFO: libc::c_ulong = vfio_io(7);
/// Device: `VFIO_DEVICE_GET_REGION_INFO`.
pub const VFIO_DEVICE_GET_REGION_INFO: libc::c_ulong = vfio_io(8);
/// Device: `VFIO_DEVICE_RESET`.
pub const VFIO_DEVICE_RESET: libc::c_ulong = vfio_io(11);

/// IOMMU model: type1.
pub const VFIO_TYPE1_IOMMU: libc::c_ulong = 1;
/// IOMMU model: type1 v2 (preferred).
pub const VFIO_TYPE1V2_IOMMU: libc::c_ulong = 3;

/// Group status: all devices in the group are bound to VFIO drivers.
pub const VFIO_GROUP_FLAGS_VIABLE: u32 = 1 << 0;
/// Group status: the group is attached to a container.
pub const VFIO_GROUP_FLAGS_CONTAINER_SET: u32 = 1 << 1;

/// Device flag: `VFIO_DEVICE_RESET` is supported.
pub const VFIO_DEVICE_FLAGS_RESET: u32 = 1 << 0;
/// Device flag: a PCI device.
pub const VFIO_DEVICE_FLAGS_PCI: u32 = 1 << 1;

/// Region flag: readable with `pread`.
pub const VFIO_REGION_INFO_FLAG_READ: u32 = 1 << 0;
/// Region flag: writable with `pwrite`.
pub const VFIO_REGION_INFO_FLAG_WRITE: u32 = 1 << 1;
/// Region flag: may be mmapped.
pub const VFIO_REGION_INFO_FLAG_MMAP: u32 = 1 << 2;
/// Region flag: a capability chain follows the structure.
pub const VFIO_REGION_INFO_FLAG_CAPS: u32 = 1 << 3;

/// Capability id: sparse mmap areas.
pub const VFIO_REGION_INFO_CAP_SPARSE_MMAP: u16 = 1;
/// Capability id: region type and subtype.
pub const VFIO_REGION_INFO_CAP_TYPE: u16 = 2;
/// Capability id: the MSI-X table may be mmapped.
pub const VFIO_REGION_INFO_CAP_MSIX_MAPPABLE: u16 = 3;

/// vfio-pci region index of BAR0 (BARs are 0..=5).
pub const VFIO_PCI_BAR0_REGION_INDEX: u32 = 0;
/// vfio-pci region index of the expansion ROM.
pub const VFIO_PCI_ROM_REGION_INDEX: u32 = 6;
/// vfio-pci region index of config space.
pub const VFIO_PCI_CONFIG_REGION_INDEX: u32 = 7;
/// vfio-pci encodes the region index at this bit of the file offset. Used
/// only to ask the kernel to mmap a region that region-info does not know,
/// so that the kernel's own validation answers.
pub const VFIO_PCI_OFFSET_SHIFT: u32 = 40;

/// PCI config space: the COMMAND register.
pub const PCI_COMMAND: u64 = 0x04;
/// COMMAND bit: memory space decoding enabled.
pub const PCI_COMMAND_MEMORY: u16 = 0x2;

/// `struct vfio_group_status`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct VfioGroupStatus {
    /// Size of the structure.
    pub argsz: u32,
    /// `VFIO_GROUP_FLAGS_*`.
    pub flags: u32,
}

/// `struct vfio_device_info`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct VfioDeviceInfo {
    /// Size of the structure (and of any capabilities after it).
    pub argsz: u32,
    /// `VFIO_DEVICE_FLAGS_*`.
    pub flags: u32,
    /// Number of regions.
    pub num_regions: u32,
    /// Number of interrupt types.
    pub num_irqs: u32,
    /// Offset of the first capability, if any.
    pub cap_offset: u32,
    /// Padding.
    pub pad: u32,
}

/// `struct vfio_region_info`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct VfioRegionInfo {
    /// Size of the structure (and of any capabilities after it).
    pub argsz: u32,
    /// `VFIO_REGION_INFO_FLAG_*`.
    pub flags: u32,
    /// Region index.
    pub index: u32,
    /// Offset of the first capability from the start of this structure.
    pub cap_offset: u32,
    /// Region size in bytes.
    pub size: u64,
    /// Offset of the region in the device fd.
    pub offset: u64,
}

/// Size of `struct vfio_region_info` (the capability chain starts after it).
pub const REGION_INFO_SIZE: usize = std::mem::size_of::<VfioRegionInfo>();
/// Size of `struct vfio_info_cap_header`.
pub const CAP_HEADER_SIZE: usize = 8;

// ----- the rest of the uAPI that a VFIO program may call --------------------

/// Group: `VFIO_GROUP_UNSET_CONTAINER`.
pub const VFIO_GROUP_UNSET_CONTAINER: libc::c_ulong = vfio_io(5);
/// Device: `VFIO_DEVICE_GET_IRQ_INFO`.
pub const VFIO_DEVICE_GET_IRQ_INFO: libc::c_ulong = vfio_io(9);
/// Device: `VFIO_DEVICE_SET_IRQS`.
pub const VFIO_DEVICE_SET_IRQS: libc::c_ulong = vfio_io(10);
/// Container: `VFIO_IOMMU_GET_INFO`.
pub const VFIO_IOMMU_GET_INFO: libc::c_ulong = vfio_io(12);
/// Container: `VFIO_IOMMU_MAP_DMA`.
pub const VFIO_IOMMU_MAP_DMA: libc::c_ulong = vfio_io(13);
/// Container: `VFIO_IOMMU_UNMAP_DMA`.
pub const VFIO_IOMMU_UNMAP_DMA: libc::c_ulong = vfio_io(14);
/// Device: `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO` (same number as
/// `VFIO_IOMMU_GET_INFO`, on a device fd).
pub const VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: libc::c_ulong = vfio_io(12);
/// Device: `VFIO_DEVICE_FEATURE`.
pub const VFIO_DEVICE_FEATURE: libc::c_ulong = vfio_io(17);
/// Device (cdev): `VFIO_DEVICE_BIND_IOMMUFD`.
pub const VFIO_DEVICE_BIND_IOMMUFD: libc::c_ulong = vfio_io(18);
/// Device (cdev): `VFIO_DEVICE_ATTACH_IOMMUFD_PT`.
pub const VFIO_DEVICE_ATTACH_IOMMUFD_PT: libc::c_ulong = vfio_io(19);
/// Device (cdev): `VFIO_DEVICE_DETACH_IOMMUFD_PT`.
pub const VFIO_DEVICE_DETACH_IOMMUFD_PT: libc::c_ulong = vfio_io(20);

/// Extension: no-IOMMU mode (`VFIO_NOIOMMU_IOMMU`).
pub const VFIO_NOIOMMU_IOMMU: libc::c_ulong = 8;
/// Extension: unmap of everything (`VFIO_UNMAP_ALL`).
pub const VFIO_UNMAP_ALL: libc::c_ulong = 9;
/// Extension: vaddr update (`VFIO_UPDATE_VADDR`).
pub const VFIO_UPDATE_VADDR: libc::c_ulong = 10;

/// Device info flag: a capability chain follows.
pub const VFIO_DEVICE_FLAGS_CAPS: u32 = 1 << 7;
/// vfio-pci's regions: six BARs, ROM, config, VGA.
pub const VFIO_PCI_NUM_REGIONS: u32 = 9;
/// vfio-pci's interrupt indices: INTx, MSI, MSI-X, ERR, REQ.
pub const VFIO_PCI_NUM_IRQS: u32 = 5;
/// IRQ index: legacy INTx.
pub const VFIO_PCI_INTX_IRQ_INDEX: u32 = 0;
/// IRQ index: MSI.
pub const VFIO_PCI_MSI_IRQ_INDEX: u32 = 1;
/// IRQ index: MSI-X.
pub const VFIO_PCI_MSIX_IRQ_INDEX: u32 = 2;
/// IRQ index: error (AER) notification.
pub const VFIO_PCI_ERR_IRQ_INDEX: u32 = 3;
/// IRQ index: device request notification.
pub const VFIO_PCI_REQ_IRQ_INDEX: u32 = 4;

/// IRQ info flag: signalled through an eventfd.
pub const VFIO_IRQ_INFO_EVENTFD: u32 = 1 << 0;
/// IRQ info flag: may be masked.
pub const VFIO_IRQ_INFO_MASKABLE: u32 = 1 << 1;
/// IRQ info flag: masked automatically when it fires (INTx).
pub const VFIO_IRQ_INFO_AUTOMASKED: u32 = 1 << 2;
/// IRQ info flag: the vector count cannot grow while enabled.
pub const VFIO_IRQ_INFO_NORESIZE: u32 = 1 << 3;

/// SET_IRQS data: none.
pub const VFIO_IRQ_SET_DATA_NONE: u32 = 1 << 0;
/// SET_IRQS data: one u8 per vector.
pub const VFIO_IRQ_SET_DATA_BOOL: u32 = 1 << 1;
/// SET_IRQS data: one s32 eventfd per vector (-1 to tear down).
pub const VFIO_IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
/// SET_IRQS action: mask.
pub const VFIO_IRQ_SET_ACTION_MASK: u32 = 1 << 3;
/// SET_IRQS action: unmask.
pub const VFIO_IRQ_SET_ACTION_UNMASK: u32 = 1 << 4;
/// SET_IRQS action: trigger (with DATA_EVENTFD: set the trigger eventfds).
pub const VFIO_IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;
/// SET_IRQS: the data-type bits.
pub const VFIO_IRQ_SET_DATA_TYPE_MASK: u32 = 0x7;
/// SET_IRQS: the action bits.
pub const VFIO_IRQ_SET_ACTION_TYPE_MASK: u32 = 0x38;

/// `struct vfio_irq_info`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct VfioIrqInfo {
    /// Size of the structure.
    pub argsz: u32,
    /// `VFIO_IRQ_INFO_*`.
    pub flags: u32,
    /// IRQ index.
    pub index: u32,
    /// Number of vectors.
    pub count: u32,
}

/// `struct vfio_irq_set` without its trailing data.
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

/// IOMMU info flag: `iova_pgsizes` is valid.
pub const VFIO_IOMMU_INFO_PGSIZES: u32 = 1 << 0;
/// IOMMU info flag: a capability chain follows.
pub const VFIO_IOMMU_INFO_CAPS: u32 = 1 << 1;
/// IOMMU info capability: usable IOVA ranges.
pub const VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE: u16 = 1;
/// IOMMU info capability: how many DMA mappings are still available.
pub const VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL: u16 = 3;

/// `struct vfio_iommu_type1_info`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct VfioIommuType1Info {
    /// Size of the structure (and capabilities).
    pub argsz: u32,
    /// `VFIO_IOMMU_INFO_*`.
    pub flags: u32,
    /// Bitmap of supported IOVA page sizes.
    pub iova_pgsizes: u64,
    /// Offset of the first capability.
    pub cap_offset: u32,
    /// Padding.
    pub pad: u32,
}

/// DMA map flag: the device may read.
pub const VFIO_DMA_MAP_FLAG_READ: u32 = 1 << 0;
/// DMA map flag: the device may write.
pub const VFIO_DMA_MAP_FLAG_WRITE: u32 = 1 << 1;
/// DMA map flag: update the vaddr of an existing mapping.
pub const VFIO_DMA_MAP_FLAG_VADDR: u32 = 1 << 2;
/// DMA unmap flag: return a dirty bitmap.
pub const VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP: u32 = 1 << 0;
/// DMA unmap flag: unmap everything.
pub const VFIO_DMA_UNMAP_FLAG_ALL: u32 = 1 << 1;
/// DMA unmap flag: invalidate vaddrs only.
pub const VFIO_DMA_UNMAP_FLAG_VADDR: u32 = 1 << 2;

/// `struct vfio_iommu_type1_dma_map`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct VfioDmaMap {
    /// Size of the structure.
    pub argsz: u32,
    /// `VFIO_DMA_MAP_FLAG_*`.
    pub flags: u32,
    /// Process virtual address.
    pub vaddr: u64,
    /// IO virtual address.
    pub iova: u64,
    /// Bytes.
    pub size: u64,
}

/// `struct vfio_iommu_type1_dma_unmap` without its trailing data.
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

/// `struct vfio_device_bind_iommufd`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct VfioDeviceBindIommufd {
    /// Size of the structure.
    pub argsz: u32,
    /// Must be 0.
    pub flags: u32,
    /// The iommufd.
    pub iommufd: i32,
    /// The device's id in the iommufd.
    pub out_devid: u32,
}

/// `struct vfio_device_attach_iommufd_pt` (without the pasid extension).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct VfioDeviceAttachIommufdPt {
    /// Size of the structure.
    pub argsz: u32,
    /// Must be 0 (or `VFIO_DEVICE_ATTACH_PASID` with the extension).
    pub flags: u32,
    /// The IOAS or HWPT to attach to; on return the HWPT.
    pub pt_id: u32,
}
