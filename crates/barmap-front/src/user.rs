//! Copies between the program's memory and the front end's, as the kernel
//! does with copy_from_user/copy_to_user: a bad pointer is EFAULT, never a
//! signal (the copy goes through the kernel, see `barmap::os`).

use crate::Errno;

/// Reads `len` bytes at `addr`.
pub fn read(addr: usize, len: usize) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; len];
    if len > 0 {
        barmap::os::copy_from_user(addr as *const u8, &mut buf).map_err(|_| Errno::EFAULT)?;
    }
    Ok(buf)
}

/// Writes `data` at `addr`.
pub fn write(addr: usize, data: &[u8]) -> Result<(), Errno> {
    if data.is_empty() {
        return Ok(());
    }
    barmap::os::copy_to_user(data, addr as *mut u8).map_err(|_| Errno::EFAULT)
}

/// A `#[repr(C)]` plain-old-data structure of the uAPI: every bit pattern
/// is a valid value.
///
/// # Safety
/// Implement only for `#[repr(C)]` structs of integers without padding
/// that the uAPI gives meaning to byte by byte.
pub unsafe trait Pod: Copy + Default {}

macro_rules! pod {
    ($($t:ty),* $(,)?) => { $(
        // SAFETY: a #[repr(C)] struct of integers from the uAPI headers.
        unsafe impl Pod for $t {}
    )* };
}
use barmap_vfio::iommufd as ifd;
use barmap_vfio::uapi as v;
pod!(
    v::VfioGroupStatus,
    v::VfioDeviceInfo,
    v::VfioRegionInfo,
    v::VfioIrqInfo,
    v::VfioIrqSet,
    v::VfioIommuType1Info,
    v::VfioDmaMap,
    v::VfioDmaUnmap,
    v::VfioDeviceBindIommufd,
    v::VfioDeviceAttachIommufdPt,
    ifd::IommuDestroy,
    ifd::IommuIoasAlloc,
    ifd::IommuIoasIovaRanges,
    ifd::IommuIoasMap,
    ifd::IommuIoasUnmap,
    ifd::IommuIoasCopy,
    ifd::IommuVfioIoas,
    ifd::IommuOption,
    ifd::IommuIovaRange,
);

/// Reads the first `min(len, size_of::<T>())` bytes of a `T` at `addr`;
/// the rest stays zero.
pub fn read_struct<T: Pod>(addr: usize, len: usize) -> Result<T, Errno> {
    let size = std::mem::size_of::<T>();
    let bytes = read(addr, len.min(size))?;
    let mut out = T::default();
    // SAFETY: `out` is a Pod of `size` bytes; at most `size` bytes are
    // copied into it, and any bit pattern is valid.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), (&mut out as *mut T).cast(), bytes.len());
    }
    Ok(out)
}

/// The bytes of a Pod value.
pub fn bytes_of<T: Pod>(v: &T) -> &[u8] {
    // SAFETY: a Pod has no padding and is valid to view as bytes.
    unsafe { std::slice::from_raw_parts((v as *const T).cast(), std::mem::size_of::<T>()) }
}

/// Writes the first `min(len, size_of::<T>())` bytes of `v` at `addr`.
pub fn write_struct<T: Pod>(addr: usize, v: &T, len: usize) -> Result<(), Errno> {
    let b = bytes_of(v);
    write(addr, &b[..len.min(b.len())])
}

/// The u32 at `addr` (an `argsz` or `size` field).
pub fn read_u32(addr: usize) -> Result<u32, Errno> {
    let b = read(addr, 4)?;
    Ok(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}
