//! [`barmap_target::Target`] for the emulated [`Device`], so the shared
//! scenario suite runs against barmap exactly as against vfio-pci.

use barmap_target::{Layout, Prot, Target, TargetError, TargetMapping};

use crate::device::{Device, DEFAULT_MEMORY_BAR};
use crate::mapping::Mapping;

impl Target for Device {
    type Mapping = Mapping;

    fn name(&self) -> String {
        format!("barmap ({})", self.policy())
    }

    fn layout(&self) -> Layout {
        Layout {
            memory_region: DEFAULT_MEMORY_BAR,
            memory_size: self.region_info(DEFAULT_MEMORY_BAR).map_or(0, |r| r.size),
            unmappable_region: (0..6).find(|&i| self.region_info(i).is_some_and(|r| !r.flags.mmap)),
            missing_region: 6,
        }
    }

    fn map(
        &self,
        region: u32,
        offset: u64,
        len: usize,
        prot: Prot,
    ) -> Result<Mapping, TargetError> {
        Device::map(self, region, offset, len, prot).map_err(Into::into)
    }

    fn set_memory_enabled(&self, enabled: bool) -> Result<(), TargetError> {
        Device::set_memory_enabled(self, enabled);
        Ok(())
    }

    fn reset(&self) -> Result<(), TargetError> {
        Device::reset(self).map_err(Into::into)
    }

    fn read_region(&self, region: u32, offset: u64, buf: &mut [u8]) -> Result<(), TargetError> {
        Device::read_region(self, region, offset, buf).map_err(Into::into)
    }

    fn write_region(&self, region: u32, offset: u64, buf: &[u8]) -> Result<(), TargetError> {
        Device::write_region(self, region, offset, buf).map_err(Into::into)
    }
}

impl TargetMapping for Mapping {
    fn addr(&self) -> usize {
        Mapping::addr(self)
    }
    fn len(&self) -> usize {
        Mapping::len(self)
    }
    fn unmap_range(&mut self, offset: usize, len: usize) -> Result<(), TargetError> {
        self.unmap(offset, len).map_err(Into::into)
    }
}
