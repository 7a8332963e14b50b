//! barmap's own commands beyond vfio-user, between barmap's client and
//! barmap's server only (a foreign client never sends them; a foreign
//! server answers ENOTTY).
//!
//! - [`REGION_WRITE64`]: one 64-byte store to a register BAR, made
//!   atomically by one instruction (MOVDIR64B, ENQCMD, ENQCMDS), as the
//!   register trap of a process catches it. A `REGION_WRITE` of 64 bytes
//!   would reach the model as eight 8-byte writes, which a device portal
//!   (DSA's) drops. Payload: [`RegionWrite64`]. Reply: `u32`, 1 if the
//!   device accepted the store (for ENQCMD/ENQCMDS), else 0.
//! - [`DMA_UNMAP_ANY`]: `DMA_UNMAP` of the window of exactly this IOVA and
//!   size whichever client mapped it, for processes that share one IOAS
//!   (an iommufd held by several processes of one program: a holder unmaps
//!   what another mapped, as on the kernel). Payload: `DmaUnmap`'s. Reply:
//!   empty; ENOENT if no window is exactly that.

use crate::{put_u32, put_u64, Fields};

/// The command number of a 64-byte store (outside vfio-user's numbers).
pub const REGION_WRITE64: u16 = 0xba01;

/// The command number of a DMA unmap of any client's window.
pub const DMA_UNMAP_ANY: u16 = 0xba02;

/// The instruction that made a 64-byte store, as the wire numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store64Insn {
    /// MOVDIR64B (0).
    Movdir64b,
    /// ENQCMD (1).
    Enqcmd,
    /// ENQCMDS (2).
    Enqcmds,
}

/// The payload of [`REGION_WRITE64`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionWrite64 {
    /// Offset in the region, 64-byte aligned.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// The instruction.
    pub how: Store64Insn,
    /// The 64 bytes.
    pub data: [u8; 64],
}

impl RegionWrite64 {
    /// Bytes of the layout.
    pub const SIZE: usize = 80;

    /// Encodes it.
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(Self::SIZE);
        put_u64(&mut p, self.offset);
        put_u32(&mut p, self.region);
        put_u32(
            &mut p,
            match self.how {
                Store64Insn::Movdir64b => 0,
                Store64Insn::Enqcmd => 1,
                Store64Insn::Enqcmds => 2,
            },
        );
        p.extend_from_slice(&self.data);
        p
    }

    /// Decodes it; `None` when `p` is too short or names no instruction.
    pub fn decode(p: &[u8]) -> Option<RegionWrite64> {
        let how = match p.u32_at(12)? {
            0 => Store64Insn::Movdir64b,
            1 => Store64Insn::Enqcmd,
            2 => Store64Insn::Enqcmds,
            _ => return None,
        };
        Some(RegionWrite64 {
            offset: p.u64_at(0)?,
            region: p.u32_at(8)?,
            how,
            data: p.get(16..Self::SIZE)?.try_into().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_64_byte_store_round_trips_and_a_short_or_unknown_one_is_refused() {
        let mut data = [0u8; 64];
        data.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        let w = RegionWrite64 {
            offset: 0x1040,
            region: 2,
            how: Store64Insn::Enqcmd,
            data,
        };
        let p = w.encode();
        assert_eq!(p.len(), RegionWrite64::SIZE);
        assert_eq!(RegionWrite64::decode(&p), Some(w));
        assert_eq!(RegionWrite64::decode(&p[..79]), None);
        let mut bad = p.clone();
        bad[12] = 3;
        assert_eq!(RegionWrite64::decode(&bad), None);
    }
}
