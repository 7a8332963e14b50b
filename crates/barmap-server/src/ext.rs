//! barmap's own commands beyond vfio-user, for barmap's client only (a
//! foreign client never sends them; a foreign server answers ENOTTY).
//!
//! - [`REGION_WRITE64`]: one 64-byte store to a register BAR, made
//!   atomically by one instruction (MOVDIR64B, ENQCMD, ENQCMDS), as the
//!   register trap of a process catches it. A `REGION_WRITE` of 64 bytes
//!   would reach the model as eight 8-byte writes, which a device portal
//!   (DSA's) drops. Payload: offset (u64), region (u32), the instruction
//!   (u32: 0 MOVDIR64B, 1 ENQCMD, 2 ENQCMDS), the 64 bytes. Reply: u32, 1
//!   if the device accepted the store (for ENQCMD/ENQCMDS), else 0.

use barmap_models::Store64;

use crate::device::ServedDevice;

/// The command number of a 64-byte store (outside vfio-user's numbers).
pub const REGION_WRITE64: u16 = 0xba01;

/// The instruction's number on the wire.
pub fn store64_code(how: Store64) -> u32 {
    match how {
        Store64::Movdir64b => 0,
        Store64::Enqcmd => 1,
        Store64::Enqcmds => 2,
    }
}

/// [`REGION_WRITE64`]: the reply's payload, or an errno (EINVAL for a
/// short payload, an unknown instruction or an unaligned offset; the
/// model's answer otherwise).
pub fn region_write64(dev: &ServedDevice, payload: &[u8]) -> Result<Vec<u8>, i32> {
    let offset = payload
        .get(0..8)
        .map(|b| u64::from_ne_bytes(b.try_into().unwrap()))
        .ok_or(libc::EINVAL)?;
    let region = payload
        .get(8..12)
        .map(|b| u32::from_ne_bytes(b.try_into().unwrap()))
        .ok_or(libc::EINVAL)?;
    let how = match payload
        .get(12..16)
        .map(|b| u32::from_ne_bytes(b.try_into().unwrap()))
    {
        Some(0) => Store64::Movdir64b,
        Some(1) => Store64::Enqcmd,
        Some(2) => Store64::Enqcmds,
        _ => return Err(libc::EINVAL),
    };
    let data: &[u8; 64] = payload
        .get(16..80)
        .and_then(|b| b.try_into().ok())
        .ok_or(libc::EINVAL)?;
    if offset % 64 != 0 {
        return Err(libc::EINVAL);
    }
    let accepted = dev
        .model()
        .write64(region, offset, data, how)
        .map_err(|e| crate::device::errno_of(&e))?;
    Ok(u32::from(accepted).to_ne_bytes().to_vec())
}
