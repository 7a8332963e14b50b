//! [`barmap_target::Target`] for a real vfio-pci device.

use crate::device::VfioDevice;
use crate::mapping::BarMapping;
use crate::uapi::{VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX};
use barmap_target::{ErrorClass, Layout, Placement, Prot, Target, TargetError, TargetMapping};
use std::io;

/// The comparable class of a kernel error: EINVAL is a bad argument,
/// EACCES/EPERM a refusal, EIO disabled device memory, ENOTTY/EOPNOTSUPP an
/// unsupported operation; anything else (and errors with no errno) is Other.
pub fn error_class(err: &io::Error) -> ErrorClass {
    match err.raw_os_error() {
        Some(libc::EINVAL) => ErrorClass::InvalidArgument,
        Some(libc::EACCES) | Some(libc::EPERM) => ErrorClass::Permission,
        Some(libc::EIO) => ErrorClass::MemoryDisabled,
        Some(libc::ENOTTY) | Some(libc::EOPNOTSUPP) => ErrorClass::Unsupported,
        _ => ErrorClass::Other,
    }
}

fn target_error(what: &str, err: io::Error) -> TargetError {
    TargetError::new(error_class(&err), format!("{what}: {err}"))
}

impl TargetMapping for BarMapping {
    fn addr(&self) -> usize {
        BarMapping::addr(self)
    }

    fn len(&self) -> usize {
        BarMapping::len(self)
    }

    fn unmap_range(&mut self, offset: usize, len: usize) -> Result<(), TargetError> {
        BarMapping::unmap_range(self, offset, len).map_err(|e| target_error("munmap", e))
    }
}

impl Target for VfioDevice {
    type Mapping = BarMapping;

    fn name(&self) -> String {
        format!("vfio {}", VfioDevice::name(self))
    }

    /// The largest mmappable BAR is the memory region; config space is the
    /// region that exists but may not be mmapped; `num_regions` does not exist.
    fn layout(&self) -> Layout {
        let bars = VFIO_PCI_BAR0_REGION_INDEX..VFIO_PCI_BAR0_REGION_INDEX + 6;
        let best = bars
            .filter_map(|i| self.region(i))
            .filter(|r| r.mmappable() && r.size > 0)
            .max_by_key(|r| r.size);
        let unmappable = self
            .region(VFIO_PCI_CONFIG_REGION_INDEX)
            .filter(|r| !r.mmappable())
            .map(|r| r.index);
        Layout {
            memory_region: best.map_or(0, |r| r.index),
            memory_size: best.map_or(0, |r| r.size),
            unmappable_region: unmappable,
            missing_region: self.info().num_regions,
        }
    }

    fn map(
        &self,
        region: u32,
        offset: u64,
        len: usize,
        prot: Prot,
    ) -> Result<BarMapping, TargetError> {
        VfioDevice::map(self, region, offset, len, prot.writable())
            .map_err(|e| target_error("mmap", e))
    }

    fn map_placed(
        &self,
        region: u32,
        offset: u64,
        len: usize,
        prot: Prot,
        placement: Placement,
    ) -> Result<BarMapping, TargetError> {
        VfioDevice::map_placed(self, region, offset, len, prot.writable(), placement)
            .map_err(|e| target_error("mmap", e))
    }

    fn set_memory_enabled(&self, enabled: bool) -> Result<(), TargetError> {
        VfioDevice::set_memory_enabled(self, enabled).map_err(|e| target_error("COMMAND.MEM", e))
    }

    fn reset(&self) -> Result<(), TargetError> {
        VfioDevice::reset(self).map_err(|e| target_error("VFIO_DEVICE_RESET", e))
    }

    fn read_region(&self, region: u32, offset: u64, buf: &mut [u8]) -> Result<(), TargetError> {
        VfioDevice::read_region(self, region, offset, buf).map_err(|e| target_error("pread", e))
    }

    fn write_region(&self, region: u32, offset: u64, buf: &[u8]) -> Result<(), TargetError> {
        VfioDevice::write_region(self, region, offset, buf).map_err(|e| target_error("pwrite", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos_map_to_the_classes_the_suite_compares() {
        let class = |e| error_class(&io::Error::from_raw_os_error(e));
        assert_eq!(class(libc::EINVAL), ErrorClass::InvalidArgument);
        assert_eq!(class(libc::EACCES), ErrorClass::Permission);
        assert_eq!(class(libc::EPERM), ErrorClass::Permission);
        assert_eq!(class(libc::EIO), ErrorClass::MemoryDisabled);
        assert_eq!(class(libc::ENOTTY), ErrorClass::Unsupported);
        assert_eq!(class(libc::EOPNOTSUPP), ErrorClass::Unsupported);
        assert_eq!(class(libc::ENOMEM), ErrorClass::Other);
        assert_eq!(
            error_class(&io::Error::other("no errno")),
            ErrorClass::Other
        );
    }

    #[test]
    fn opening_a_device_that_does_not_exist_reports_enoent_as_other() {
        let err = VfioDevice::open_pci("ffff:ff:1f.7").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        assert_eq!(error_class(&err), ErrorClass::Other);
    }
}
