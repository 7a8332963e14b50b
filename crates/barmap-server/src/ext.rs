//! barmap's own commands beyond vfio-user, for barmap's client only (a
//! foreign client never sends them; a foreign server answers ENOTTY);
//! their layout is in `barmap_vfio_user::ext`.
//!
//! - [`REGION_WRITE64`]: one 64-byte store to a register BAR, made
//!   atomically by one instruction (MOVDIR64B, ENQCMD, ENQCMDS), as the
//!   register trap of a process catches it. A `REGION_WRITE` of 64 bytes
//!   would reach the model as eight 8-byte writes, which a device portal
//!   (DSA's) drops. Payload: offset (u64), region (u32), the instruction
//!   (u32: 0 MOVDIR64B, 1 ENQCMD, 2 ENQCMDS), the 64 bytes. Reply: u32, 1
//!   if the device accepted the store (for ENQCMD/ENQCMDS), else 0.
//! - [`DMA_UNMAP_ANY`]: the window of exactly this IOVA and size, whichever
//!   client mapped it, goes (processes of one program sharing an IOAS).

use barmap_models::Store64;
use barmap_vfio_user::ext::{RegionWrite64, Store64Insn};

use crate::device::ServedDevice;

pub use barmap_vfio_user::ext::{DMA_UNMAP_ANY, REGION_WRITE64};

/// [`REGION_WRITE64`]: the reply's payload, or an errno (EINVAL for a
/// short payload, an unknown instruction or an unaligned offset; the
/// model's answer otherwise).
pub fn region_write64(dev: &ServedDevice, payload: &[u8]) -> Result<Vec<u8>, i32> {
    let w = RegionWrite64::decode(payload).ok_or(libc::EINVAL)?;
    if w.offset % 64 != 0 {
        return Err(libc::EINVAL);
    }
    let how = match w.how {
        Store64Insn::Movdir64b => Store64::Movdir64b,
        Store64Insn::Enqcmd => Store64::Enqcmd,
        Store64Insn::Enqcmds => Store64::Enqcmds,
    };
    let accepted = dev
        .model()
        .write64(w.region, w.offset, &w.data, how)
        .map_err(|e| crate::device::errno_of(&e))?;
    Ok(u32::from(accepted).to_ne_bytes().to_vec())
}

/// [`DMA_UNMAP_ANY`]: EINVAL for a short payload or any flag, ENOENT if no
/// window is exactly that range.
pub fn dma_unmap_any(dev: &ServedDevice, payload: &[u8]) -> Result<Vec<u8>, i32> {
    let u = barmap_vfio_user::DmaUnmap::decode(payload).ok_or(libc::EINVAL)?;
    if u.flags != 0 {
        return Err(libc::EINVAL);
    }
    dev.host().dma_unmap_any(u.addr, u.size)?;
    Ok(Vec::new())
}
