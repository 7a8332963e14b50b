//! barmap's own commands beyond vfio-user (`barmap_vfio_user::ext` has
//! their layout), sent to barmap's server only; a foreign server answers
//! ENOTTY, which [`Remote::write64`] returns.

use crate::proto;
use barmap_vfio_user::ext::{RegionWrite64, Store64Insn, DMA_UNMAP_ANY, REGION_WRITE64};
use barmap_vfio_user::Fields;

use crate::{Remote, Result};

impl Remote {
    /// One 64-byte store of `data` at `offset` (64-byte aligned) of register
    /// BAR `index`, made by instruction `how`: whether the device accepted
    /// it.
    pub fn write64(
        &self,
        index: u32,
        offset: u64,
        data: &[u8; 64],
        how: Store64Insn,
    ) -> Result<bool> {
        let p = RegionWrite64 {
            offset,
            region: index,
            how,
            data: *data,
        }
        .encode();
        let r = self.conn.request(REGION_WRITE64, &[&p], &[])?;
        Ok(r.payload.u32_at(0) == Some(1))
    }

    /// `DMA_UNMAP` of the window of exactly `size` bytes at `iova`,
    /// whichever client of the device mapped it ([`DMA_UNMAP_ANY`]).
    pub fn dma_unmap_any(&self, iova: u64, size: u64) -> Result<()> {
        let p = proto::DmaUnmap {
            argsz: proto::DmaUnmap::SIZE as u32,
            flags: 0,
            addr: iova,
            size,
        }
        .encode();
        self.conn.request(DMA_UNMAP_ANY, &[&p], &[])?;
        Ok(())
    }
}
