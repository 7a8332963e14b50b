//! The iommufd user-space ABI (include/uapi/linux/iommufd.h) that VFIO
//! programs use: ioctl numbers and the fixed-size structures.

/// `_IO(';', nr)`: iommufd's ioctls carry no size or direction bits.
const fn iommufd_io(nr: u32) -> libc::c_ulong {
    ((b';' as u32) << 8 | nr) as libc::c_ulong
}

/// `IOMMU_DESTROY`.
pub const IOMMU_DESTROY: libc::c_ulong = iommufd_io(0x80);
/// `IOMMU_IOAS_ALLOC`.
pub const IOMMU_IOAS_ALLOC: libc::c_ulong = iommufd_io(0x81);
/// `IOMMU_IOAS_ALLOW_IOVAS`.
pub const IOMMU_IOAS_ALLOW_IOVAS: libc::c_ulong = iommufd_io(0x82);
/// `IOMMU_IOAS_COPY`.
pub const IOMMU_IOAS_COPY: libc::c_ulong = iommufd_io(0x83);
/// `IOMMU_IOAS_IOVA_RANGES`.
pub const IOMMU_IOAS_IOVA_RANGES: libc::c_ulong = iommufd_io(0x84);
/// `IOMMU_IOAS_MAP`.
pub const IOMMU_IOAS_MAP: libc::c_ulong = iommufd_io(0x85);
/// `IOMMU_IOAS_UNMAP`.
pub const IOMMU_IOAS_UNMAP: libc::c_ulong = iommufd_io(0x86);
/// `IOMMU_OPTION`.
pub const IOMMU_OPTION: libc::c_ulong = iommufd_io(0x87);
/// `IOMMU_VFIO_IOAS`.
pub const IOMMU_VFIO_IOAS: libc::c_ulong = iommufd_io(0x88);

/// IOAS map flag: the caller chose the IOVA.
pub const IOMMU_IOAS_MAP_FIXED_IOVA: u32 = 1 << 0;
/// IOAS map flag: DMA may write.
pub const IOMMU_IOAS_MAP_WRITEABLE: u32 = 1 << 1;
/// IOAS map flag: DMA may read.
pub const IOMMU_IOAS_MAP_READABLE: u32 = 1 << 2;

/// `struct iommu_destroy`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct IommuDestroy {
    /// Size of the structure.
    pub size: u32,
    /// Object id.
    pub id: u32,
}

/// `struct iommu_ioas_alloc`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct IommuIoasAlloc {
    /// Size of the structure.
    pub size: u32,
    /// Must be 0.
    pub flags: u32,
    /// The new IOAS's id.
    pub out_ioas_id: u32,
}

/// `struct iommu_iova_range` (inclusive).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct IommuIovaRange {
    /// First IOVA.
    pub start: u64,
    /// Last IOVA (inclusive).
    pub last: u64,
}

/// `struct iommu_ioas_iova_ranges`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct IommuIoasIovaRanges {
    /// Size of the structure.
    pub size: u32,
    /// IOAS id.
    pub ioas_id: u32,
    /// In: array length; out: ranges in the IOAS.
    pub num_iovas: u32,
    /// Must be 0.
    pub reserved: u32,
    /// User pointer to `num_iovas` ranges.
    pub allowed_iovas: u64,
    /// Out: the IOVA alignment maps need.
    pub out_iova_alignment: u64,
}

/// `struct iommu_ioas_map`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct IommuIoasMap {
    /// Size of the structure.
    pub size: u32,
    /// `IOMMU_IOAS_MAP_*`.
    pub flags: u32,
    /// IOAS id.
    pub ioas_id: u32,
    /// Must be 0.
    pub reserved: u32,
    /// Process virtual address.
    pub user_va: u64,
    /// Bytes.
    pub length: u64,
    /// IOVA (in with FIXED_IOVA, else out).
    pub iova: u64,
}

/// `struct iommu_ioas_unmap`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct IommuIoasUnmap {
    /// Size of the structure.
    pub size: u32,
    /// IOAS id.
    pub ioas_id: u32,
    /// First IOVA.
    pub iova: u64,
    /// Bytes (out: bytes unmapped).
    pub length: u64,
}

/// `struct iommu_ioas_copy`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct IommuIoasCopy {
    /// Size of the structure.
    pub size: u32,
    /// `IOMMU_IOAS_MAP_*`.
    pub flags: u32,
    /// Destination IOAS.
    pub dst_ioas_id: u32,
    /// Source IOAS.
    pub src_ioas_id: u32,
    /// Bytes.
    pub length: u64,
    /// Destination IOVA.
    pub dst_iova: u64,
    /// Source IOVA.
    pub src_iova: u64,
}

/// `struct iommu_vfio_ioas`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct IommuVfioIoas {
    /// Size of the structure.
    pub size: u32,
    /// IOAS id.
    pub ioas_id: u32,
    /// `IOMMU_VFIO_IOAS_GET`/`SET`/`CLEAR`.
    pub op: u16,
    /// Must be 0.
    pub reserved: u16,
}

/// `struct iommu_option`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct IommuOption {
    /// Size of the structure.
    pub size: u32,
    /// Option.
    pub option_id: u32,
    /// Set (0) or get (1).
    pub op: u16,
    /// Must be 0.
    pub reserved: u16,
    /// Object id.
    pub object_id: u32,
    /// Value.
    pub val64: u64,
}
