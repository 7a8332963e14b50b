//! barmap's default device as a model: every BAR is memory, so the model
//! is never called and the device is exactly barmap's default one.

use barmap::{RegionSpec, DEFAULT_ID, DEFAULT_MEMORY_BAR};

use crate::model::{Ctx, DeviceModel, Layout, RegionKind, Width};

/// The default device of `barmap run` (`--device default`):
/// - BAR0: 64 KiB of register memory, the ID register at 0
///   ([`DEFAULT_ID`]), mappable as a whole, an MSI-X table at 0x8000 and
///   PBA at 0x8800 (plain memory, as before models existed);
/// - BAR2: the memory BAR, 64-bit prefetchable;
/// - BAR4: a 4 KiB read-only information page;
/// - BAR5: 256 bytes that may not be mmapped;
/// - one MSI vector, eight MSI-X vectors.
#[derive(Debug, Clone)]
pub struct DefaultDevice {
    memory: u64,
}

impl DefaultDevice {
    /// The default device with a memory BAR of `memory` bytes.
    pub fn new(memory: u64) -> DefaultDevice {
        DefaultDevice { memory }
    }
}

impl DeviceModel for DefaultDevice {
    fn layout(&self) -> Layout {
        let mut id = DEFAULT_ID.to_le_bytes().to_vec();
        id.resize(8, 0);
        Layout::new(0x1234, 0xba00)
            .class(0x05_00_00)
            .region(0, RegionKind::Memory(RegionSpec::registers(64 << 10, id)))
            .region(
                DEFAULT_MEMORY_BAR,
                RegionKind::Memory(RegionSpec::memory(self.memory).bits64()),
            )
            .region(
                4,
                RegionKind::Memory(
                    RegionSpec::registers(4096, b"barmap info page\n".to_vec()).read_only(),
                ),
            )
            .region(
                5,
                RegionKind::Memory(RegionSpec::registers(256, Vec::new()).unmappable()),
            )
            .msi(1)
            .msix(8, 0, 0x8000, 0x8800)
    }

    fn read(&mut self, _: &mut Ctx<'_>, _: u32, _: u64, _: Width) -> u64 {
        unreachable!("the default device has no register BARs")
    }

    fn write(&mut self, _: &mut Ctx<'_>, _: u32, _: u64, _: Width, _: u64) {
        unreachable!("the default device has no register BARs")
    }

    fn reset(&mut self) {}
}
