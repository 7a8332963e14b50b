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
