//! The MSI-X table and pending-bit array of a register BAR, emulated: the
//! program writes message address, data and vector control; a vector
//! raised while masked (its mask bit, or the function mask) becomes
//! pending and fires when unmasked.

use barmap::Interrupts;

use crate::model::Width;

/// Bytes per table entry.
const ENTRY: u64 = 16;
/// Vector control's mask bit.
const MASKED: u32 = 1;

/// One function's MSI-X table and PBA.
#[derive(Debug)]
pub(crate) struct Msix {
    vectors: u32,
    table_at: u64,
    pba_at: u64,
    /// The table, as bytes (little-endian entries).
    table: Vec<u8>,
    pending: Vec<u64>,
}

impl Msix {
    pub(crate) fn new(irqs: &Interrupts) -> Msix {
        let vectors = u32::from(irqs.msix_vectors);
        let mut m = Msix {
            vectors,
            table_at: u64::from(irqs.msix_table),
            pba_at: u64::from(irqs.msix_pba),
            table: vec![0; vectors as usize * ENTRY as usize],
            pending: vec![0; (vectors as usize).div_ceil(64)],
        };
        m.reset();
        m
    }

    /// Power-on values: every vector masked, nothing pending.
    pub(crate) fn reset(&mut self) {
        self.table.fill(0);
        for v in 0..self.vectors {
            self.set_control(v, MASKED);
        }
        self.pending.fill(0);
    }

    fn control(&self, v: u32) -> u32 {
        let at = (v as u64 * ENTRY + 12) as usize;
        u32::from_le_bytes(self.table[at..at + 4].try_into().expect("4 bytes"))
    }

    fn set_control(&mut self, v: u32, value: u32) {
        let at = (v as u64 * ENTRY + 12) as usize;
        self.table[at..at + 4].copy_from_slice(&value.to_le_bytes());
    }

    /// Sets or clears vector `v`'s mask bit (out of range: ignored).
    pub(crate) fn set_masked(&mut self, v: u32, masked: bool) {
        if v < self.vectors {
            let c = self.control(v);
            self.set_control(v, if masked { c | MASKED } else { c & !MASKED });
        }
    }

    pub(crate) fn pending(&self, v: u32) -> bool {
        v < self.vectors && self.pending[v as usize / 64] & (1 << (v % 64)) != 0
    }

    fn set_pending(&mut self, v: u32, on: bool) {
        let (w, bit) = (v as usize / 64, 1u64 << (v % 64));
        if on {
            self.pending[w] |= bit;
        } else {
            self.pending[w] &= !bit;
        }
    }

    /// An access at `offset` of the BAR: Some(value read) if it falls in
    /// the table or the PBA (writes to the PBA are ignored, as it is
    /// read-only), None if it is the model's.
    pub(crate) fn access(&mut self, offset: u64, width: Width, write: Option<u64>) -> Option<u64> {
        let n = width.bytes();
        let table_len = self.table.len() as u64;
        if offset >= self.table_at && offset + n as u64 <= self.table_at + table_len {
            let at = (offset - self.table_at) as usize;
            return Some(match write {
                Some(v) => {
                    self.table[at..at + n].copy_from_slice(&v.to_le_bytes()[..n]);
                    0
                }
                None => {
                    let mut b = [0u8; 8];
                    b[..n].copy_from_slice(&self.table[at..at + n]);
                    u64::from_le_bytes(b)
                }
            });
        }
        let pba_len = self.pending.len() as u64 * 8;
        if offset >= self.pba_at && offset + n as u64 <= self.pba_at + pba_len {
            let at = (offset - self.pba_at) as usize;
            let bytes: Vec<u8> = self.pending.iter().flat_map(|w| w.to_le_bytes()).collect();
            let mut b = [0u8; 8];
            b[..n].copy_from_slice(&bytes[at..at + n]);
            return Some(if write.is_some() {
                0
            } else {
                u64::from_le_bytes(b)
            });
        }
        None
    }

    /// Raises `v`: true if it may be signalled now, false if it is out of
    /// range or masked (then it is left pending).
    pub(crate) fn raise(&mut self, v: u32, function_masked: bool) -> bool {
        if v >= self.vectors {
            return false;
        }
        if function_masked || self.control(v) & MASKED != 0 {
            self.set_pending(v, true);
            return false;
        }
        true
    }

    /// The pending vectors that are no longer masked, their pending bits
    /// cleared: the caller signals them.
    pub(crate) fn take_deliverable(&mut self, function_masked: bool) -> Vec<u32> {
        if function_masked {
            return Vec::new();
        }
        let fire: Vec<u32> = (0..self.vectors)
            .filter(|&v| self.pending(v) && self.control(v) & MASKED == 0)
            .collect();
        for &v in &fire {
            self.set_pending(v, false);
        }
        fire
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msix() -> Msix {
        Msix::new(&Interrupts {
            msix_vectors: 4,
            msix_table: 0x1000,
            msix_pba: 0x1800,
            ..Interrupts::default()
        })
    }

    #[test]
    fn a_masked_vector_becomes_pending_and_fires_when_unmasked() {
        let mut m = msix();
        assert_eq!(
            m.access(0x1000 + 12, Width::B4, None),
            Some(1),
            "masked at reset"
        );
        assert!(!m.raise(2, false));
        assert_eq!(m.access(0x1800, Width::B8, None), Some(0b100));
        assert!(m.take_deliverable(false).is_empty(), "still masked");
        m.access(0x1000 + 2 * 16 + 12, Width::B4, Some(0));
        assert_eq!(m.take_deliverable(false), vec![2]);
        assert_eq!(m.access(0x1800, Width::B8, None), Some(0));
        assert!(m.raise(2, false), "unmasked: fires at once");
    }

    #[test]
    fn the_function_mask_holds_every_vector_pending() {
        let mut m = msix();
        m.access(0x1000 + 12, Width::B4, Some(0));
        assert!(!m.raise(0, true));
        assert!(m.pending(0));
        assert!(m.take_deliverable(true).is_empty());
        assert_eq!(m.take_deliverable(false), vec![0]);
    }

    #[test]
    fn table_entries_read_back_and_the_pba_ignores_writes() {
        let mut m = msix();
        m.access(0x1010, Width::B8, Some(0xfee0_0000_0000_1234));
        assert_eq!(
            m.access(0x1010, Width::B8, None),
            Some(0xfee0_0000_0000_1234)
        );
        assert_eq!(m.access(0x1014, Width::B4, None), Some(0xfee0_0000));
        m.access(0x1800, Width::B8, Some(u64::MAX));
        assert_eq!(m.access(0x1800, Width::B8, None), Some(0));
        assert_eq!(m.access(0x0ff8, Width::B8, None), None, "the model's");
        assert!(!m.raise(9, false), "no such vector");
        m.reset();
        assert_eq!(m.access(0x1010, Width::B8, None), Some(0));
    }
}
