//! The iommufd user-space ABI (include/uapi/linux/iommufd.h) that VFIO
//! programs use, taken from rust-vmm's `iommufd-bindings` (bindgen output
//! of the kernel header): the structures and flag values are the crate's,
//! re-exported under the names the workspace uses (`IommuIoasMap` for
//! `iommu_ioas_map`, ...). The structures keep the kernel's field names,
//! `__reserved` included; `iommu_hw_info`'s `in_data_type`/`out_data_type`
//! is the union `__bindgen_anon_1`.
//!
//! Kept here because `iommufd-bindings` lacks them, one line each:
//! - the ioctl numbers: bindgen cannot translate the `_IO()` macros; they
//!   are computed below as `_IO(IOMMUFD_TYPE, IOMMUFD_CMD_*)` from the
//!   crate's `IOMMUFD_TYPE` and command enum (iommufd's ioctls carry no size
//!   or direction bits: each structure says its size in `size`), and a unit
//!   test checks each against the kernel's value.

use iommufd_bindings as b;

/// `_IO(IOMMUFD_TYPE, cmd)`.
const fn iommufd_io(cmd: u32) -> libc::c_ulong {
    crate::uapi::ioc(b::_IOC_NONE, b::IOMMUFD_TYPE, cmd, 0)
}

/// `IOMMU_DESTROY`.
pub const IOMMU_DESTROY: libc::c_ulong = iommufd_io(b::IOMMUFD_CMD_DESTROY);
/// `IOMMU_IOAS_ALLOC`.
pub const IOMMU_IOAS_ALLOC: libc::c_ulong = iommufd_io(b::IOMMUFD_CMD_IOAS_ALLOC);
/// `IOMMU_IOAS_ALLOW_IOVAS`.
pub const IOMMU_IOAS_ALLOW_IOVAS: libc::c_ulong = iommufd_io(b::IOMMUFD_CMD_IOAS_ALLOW_IOVAS);
/// `IOMMU_IOAS_COPY`.
pub const IOMMU_IOAS_COPY: libc::c_ulong = iommufd_io(b::IOMMUFD_CMD_IOAS_COPY);
/// `IOMMU_IOAS_IOVA_RANGES`.
pub const IOMMU_IOAS_IOVA_RANGES: libc::c_ulong = iommufd_io(b::IOMMUFD_CMD_IOAS_IOVA_RANGES);
/// `IOMMU_IOAS_MAP`.
pub const IOMMU_IOAS_MAP: libc::c_ulong = iommufd_io(b::IOMMUFD_CMD_IOAS_MAP);
/// `IOMMU_IOAS_UNMAP`.
pub const IOMMU_IOAS_UNMAP: libc::c_ulong = iommufd_io(b::IOMMUFD_CMD_IOAS_UNMAP);
/// `IOMMU_OPTION`.
pub const IOMMU_OPTION: libc::c_ulong = iommufd_io(b::IOMMUFD_CMD_OPTION);
/// `IOMMU_VFIO_IOAS`.
pub const IOMMU_VFIO_IOAS: libc::c_ulong = iommufd_io(b::IOMMUFD_CMD_VFIO_IOAS);
/// `IOMMU_HWPT_ALLOC`.
pub const IOMMU_HWPT_ALLOC: libc::c_ulong = iommufd_io(b::IOMMUFD_CMD_HWPT_ALLOC);
/// `IOMMU_GET_HW_INFO`.
pub const IOMMU_GET_HW_INFO: libc::c_ulong = iommufd_io(b::IOMMUFD_CMD_GET_HW_INFO);

/// IOAS map flag: the caller chose the IOVA.
pub const IOMMU_IOAS_MAP_FIXED_IOVA: u32 = b::iommufd_ioas_map_flags_IOMMU_IOAS_MAP_FIXED_IOVA;
/// IOAS map flag: DMA may write.
pub const IOMMU_IOAS_MAP_WRITEABLE: u32 = b::iommufd_ioas_map_flags_IOMMU_IOAS_MAP_WRITEABLE;
/// IOAS map flag: DMA may read.
pub const IOMMU_IOAS_MAP_READABLE: u32 = b::iommufd_ioas_map_flags_IOMMU_IOAS_MAP_READABLE;
/// `IOMMU_HW_INFO_FLAG_INPUT_TYPE`: `in_data_type` carries a request.
pub const IOMMU_HW_INFO_FLAG_INPUT_TYPE: u32 =
    b::iommufd_hw_info_flags_IOMMU_HW_INFO_FLAG_INPUT_TYPE;
/// `IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED`: ATS cannot be used on the device.
pub const IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED: u64 =
    b::iommufd_hw_capabilities_IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED as u64;

/// `struct iommu_destroy`.
pub type IommuDestroy = b::iommu_destroy;
/// `struct iommu_ioas_alloc`.
pub type IommuIoasAlloc = b::iommu_ioas_alloc;
/// `struct iommu_iova_range` (inclusive).
pub type IommuIovaRange = b::iommu_iova_range;
/// `struct iommu_ioas_iova_ranges`.
pub type IommuIoasIovaRanges = b::iommu_ioas_iova_ranges;
/// `struct iommu_ioas_map`.
pub type IommuIoasMap = b::iommu_ioas_map;
/// `struct iommu_ioas_unmap`.
pub type IommuIoasUnmap = b::iommu_ioas_unmap;
/// `struct iommu_ioas_copy`.
pub type IommuIoasCopy = b::iommu_ioas_copy;
/// `struct iommu_vfio_ioas`.
pub type IommuVfioIoas = b::iommu_vfio_ioas;
/// `struct iommu_option`.
pub type IommuOption = b::iommu_option;
/// `struct iommu_hwpt_alloc`.
pub type IommuHwptAlloc = b::iommu_hwpt_alloc;
/// `struct iommu_hw_info`.
pub type IommuHwInfo = b::iommu_hw_info;

#[cfg(test)]
mod tests {
    use super::*;

    /// The numbers the kernel's `_IO(IOMMUFD_TYPE, ...)` give
    /// (include/uapi/linux/iommufd.h: type ';', commands from 0x80).
    #[test]
    fn ioctl_numbers_are_the_kernels() {
        let want: &[(libc::c_ulong, libc::c_ulong)] = &[
            (IOMMU_DESTROY, 0x3b80),
            (IOMMU_IOAS_ALLOC, 0x3b81),
            (IOMMU_IOAS_ALLOW_IOVAS, 0x3b82),
            (IOMMU_IOAS_COPY, 0x3b83),
            (IOMMU_IOAS_IOVA_RANGES, 0x3b84),
            (IOMMU_IOAS_MAP, 0x3b85),
            (IOMMU_IOAS_UNMAP, 0x3b86),
            (IOMMU_OPTION, 0x3b87),
            (IOMMU_VFIO_IOAS, 0x3b88),
            (IOMMU_HWPT_ALLOC, 0x3b89),
            (IOMMU_GET_HW_INFO, 0x3b8a),
        ];
        for (i, &(got, kernel)) in want.iter().enumerate() {
            assert_eq!(got, kernel, "entry {i}: {got:#x} != {kernel:#x}");
        }
    }

    /// The first-version sizes the kernel's command table holds, and the
    /// current sizes.
    #[test]
    fn sizes_are_the_uapis() {
        use std::mem::size_of;
        assert_eq!(size_of::<IommuDestroy>(), 8);
        assert_eq!(size_of::<IommuIoasAlloc>(), 12);
        assert_eq!(size_of::<IommuIoasIovaRanges>(), 32);
        assert_eq!(size_of::<IommuIoasMap>(), 40);
        assert_eq!(size_of::<IommuIoasUnmap>(), 24);
        assert_eq!(size_of::<IommuIoasCopy>(), 40);
        assert_eq!(size_of::<IommuVfioIoas>(), 12);
        assert_eq!(size_of::<IommuOption>(), 24);
        assert_eq!(size_of::<IommuHwptAlloc>(), 48);
        assert_eq!(size_of::<IommuHwInfo>(), 40);
    }
}
