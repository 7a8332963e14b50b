//! barmap's own commands beyond vfio-user, sent to barmap's server only
//! (`barmap_server::ext` has the other side; a foreign server answers
//! ENOTTY, which [`Remote::write64`] returns).

use crate::{Remote, Result};

/// The command number of a 64-byte store (`barmap_server::ext::REGION_WRITE64`).
pub const REGION_WRITE64: u16 = 0xba01;

impl Remote {
    /// One 64-byte store of `data` at `offset` (64-byte aligned) of register
    /// BAR `index`, made by instruction `how` (0 MOVDIR64B, 1 ENQCMD, 2
    /// ENQCMDS): whether the device accepted it.
    pub fn write64(&self, index: u32, offset: u64, data: &[u8; 64], how: u32) -> Result<bool> {
        let mut p = [0u8; 16];
        p[0..8].copy_from_slice(&offset.to_ne_bytes());
        p[8..12].copy_from_slice(&index.to_ne_bytes());
        p[12..16].copy_from_slice(&how.to_ne_bytes());
        let r = self.conn.request(REGION_WRITE64, &[&p, data], &[])?;
        Ok(r.body.get(0..4) == Some(&1u32.to_ne_bytes()[..]))
    }
}
