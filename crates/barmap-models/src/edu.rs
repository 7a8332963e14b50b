//! QEMU's educational PCI device, `edu` (1234:11e8), as QEMU's
//! docs/specs/edu.rst describes it: BAR0 is 1 MiB of 32-bit registers.
//!
//! | offset | access | register |
//! |---|---|---|
//! | 0x00 | RO | identification, 0x010000ed (version 1.0) |
//! | 0x04 | RW | liveness check: reads return the complement of the last write |
//! | 0x08 | RW | factorial: a write starts computing, the result replaces the value |
//! | 0x20 | RW | status: 0x01 computing (RO), 0x80 interrupt when the factorial is done |
//! | 0x24 | RO | interrupt status: the values that raised interrupts, ORed |
//! | 0x60 | WO | interrupt raise: ORs the value into interrupt status and interrupts |
//! | 0x64 | WO | interrupt acknowledge: clears the value's bits from interrupt status |
//! | 0x80 | RW | DMA source address (64-bit) |
//! | 0x88 | RW | DMA destination address |
//! | 0x90 | RW | DMA count |
//! | 0x98 | RW | DMA command: 0x01 start, 0x02 direction (0: RAM to edu, 1: edu to RAM), 0x04 interrupt 0x100 when done |
//!
//! The DMA buffer is 4 KiB at edu address 0x40000. Registers below 0x80
//! take 4-byte accesses only, the DMA registers 4 or 8 bytes; other widths
//! read as all ones and writes of them are ignored, as are reads of
//! unknown offsets. The device interrupts by MSI if the program enabled it,
//! else through INTx, which stays asserted while interrupt status is not
//! zero.
//!
//! Unlike QEMU's, which computes in a thread and starts DMA after a 100 ms
//! timer, this edu finishes both before the write that starts them
//! returns (the status and command bits are clear by the next read): a
//! driver that waits for them properly sees no difference. A DMA the IOMMU
//! refuses transfers nothing and is counted in [`Edu::dma_faults`]; a
//! transfer outside the buffer is not started (QEMU logs it as a guest
//! error). A reset (which QEMU's edu lacks) restores the power-on values.

use crate::model::{Ctx, DeviceModel, Layout, Width};

/// Identification register value: version 1.0.
pub const ID: u32 = 0x0100_00ed;
/// Status: computing a factorial.
pub const STATUS_COMPUTING: u32 = 0x01;
/// Status: interrupt when the factorial is done.
pub const STATUS_IRQFACT: u32 = 0x80;
/// Interrupt status value of a finished factorial.
pub const FACT_IRQ: u32 = 0x0000_0001;
/// Interrupt status value of a finished DMA.
pub const DMA_IRQ: u32 = 0x0000_0100;
/// DMA command: start.
pub const DMA_RUN: u64 = 0x1;
/// DMA command: direction edu to RAM.
pub const DMA_TO_RAM: u64 = 0x2;
/// DMA command: interrupt when done.
pub const DMA_IRQ_ON_DONE: u64 = 0x4;
/// The DMA buffer's edu address.
pub const DMA_START: u64 = 0x40000;
/// The DMA buffer's size.
pub const DMA_SIZE: u64 = 4096;
/// The edu's DMA address mask (28 bits, as QEMU's default `dma_mask`).
pub const DMA_MASK: u64 = (1 << 28) - 1;

/// The edu device's state.
#[derive(Debug, Clone)]
pub struct Edu {
    addr4: u32,
    fact: u32,
    status: u32,
    irq_status: u32,
    dma_src: u64,
    dma_dst: u64,
    dma_cnt: u64,
    dma_cmd: u64,
    buf: Box<[u8; DMA_SIZE as usize]>,
    dma_faults: u64,
}

impl Default for Edu {
    fn default() -> Self {
        Edu {
            addr4: 0,
            fact: 0,
            status: 0,
            irq_status: 0,
            dma_src: 0,
            dma_dst: 0,
            dma_cnt: 0,
            dma_cmd: 0,
            buf: Box::new([0; DMA_SIZE as usize]),
            dma_faults: 0,
        }
    }
}

fn factorial(n: u32) -> u32 {
    (1..=n).fold(1u32, |acc, k| acc.wrapping_mul(k))
}

impl Edu {
    /// DMA transfers the IOMMU refused since the last reset.
    pub fn dma_faults(&self) -> u64 {
        self.dma_faults
    }

    fn raise(&mut self, ctx: &mut Ctx<'_>, value: u32) {
        self.irq_status |= value;
        if self.irq_status != 0 {
            ctx.raise(0);
        }
    }

    fn lower(&mut self, ctx: &mut Ctx<'_>, value: u32) {
        self.irq_status &= !value;
        if self.irq_status == 0 && ctx.irq_mode() != crate::model::IrqMode::Msi {
            ctx.set_intx(false);
        }
    }

    fn run_dma(&mut self, ctx: &mut Ctx<'_>) {
        let to_ram = self.dma_cmd & DMA_TO_RAM != 0;
        let (edu_addr, ram) = if to_ram {
            (self.dma_src, self.dma_dst & DMA_MASK)
        } else {
            (self.dma_dst, self.dma_src & DMA_MASK)
        };
        let n = self.dma_cnt;
        let inside = edu_addr >= DMA_START
            && n <= DMA_SIZE
            && edu_addr
                .checked_add(n)
                .is_some_and(|e| e <= DMA_START + DMA_SIZE);
        if inside && n > 0 {
            let at = (edu_addr - DMA_START) as usize;
            let part = &mut self.buf[at..at + n as usize];
            let r = if to_ram {
                ctx.dma_write(ram, part)
            } else {
                ctx.dma_read(ram, part)
            };
            if let Err(fault) = r {
                tracing::warn!(%fault, "edu: DMA refused");
                self.dma_faults += 1;
            }
        }
        self.dma_cmd &= !DMA_RUN;
        if self.dma_cmd & DMA_IRQ_ON_DONE != 0 {
            self.raise(ctx, DMA_IRQ);
        }
    }
}

impl DeviceModel for Edu {
    fn layout(&self) -> Layout {
        Layout::new(0x1234, 0x11e8)
            .class(0x00_ff_00) // sub-class 0xff: PCI_CLASS_OTHERS, as QEMU sets it
            .revision(0x10)
            .intx()
            .registers(0, 1 << 20)
            .msi(1)
    }

    fn read(&mut self, _: &mut Ctx<'_>, _: u32, offset: u64, width: Width) -> u64 {
        let ok = if offset < 0x80 {
            width == Width::B4
        } else {
            matches!(width, Width::B4 | Width::B8)
        };
        if !ok {
            return u64::MAX;
        }
        match offset {
            0x00 => u64::from(ID),
            0x04 => u64::from(self.addr4),
            0x08 => u64::from(self.fact),
            0x20 => u64::from(self.status),
            0x24 => u64::from(self.irq_status),
            0x80 => self.dma_src,
            0x88 => self.dma_dst,
            0x90 => self.dma_cnt,
            0x98 => self.dma_cmd,
            _ => u64::MAX,
        }
    }

    fn write(&mut self, ctx: &mut Ctx<'_>, _: u32, offset: u64, width: Width, value: u64) {
        let ok = if offset < 0x80 {
            width == Width::B4
        } else {
            matches!(width, Width::B4 | Width::B8)
        };
        if !ok {
            return;
        }
        let busy = self.dma_cmd & DMA_RUN != 0;
        match offset {
            0x04 => self.addr4 = !(value as u32),
            0x08 if self.status & STATUS_COMPUTING == 0 => {
                self.status |= STATUS_COMPUTING;
                self.fact = factorial(value as u32);
                self.status &= !STATUS_COMPUTING;
                if self.status & STATUS_IRQFACT != 0 {
                    self.raise(ctx, FACT_IRQ);
                }
            }
            0x20 => {
                if value as u32 & STATUS_IRQFACT != 0 {
                    self.status |= STATUS_IRQFACT;
                } else {
                    self.status &= !STATUS_IRQFACT;
                }
            }
            0x60 => self.raise(ctx, value as u32),
            0x64 => self.lower(ctx, value as u32),
            0x80 if !busy => self.dma_src = value,
            0x88 if !busy => self.dma_dst = value,
            0x90 if !busy => self.dma_cnt = value,
            0x98 if !busy && value & DMA_RUN != 0 => {
                self.dma_cmd = value;
                self.run_dma(ctx);
            }
            _ => {}
        }
    }

    fn reset(&mut self) {
        *self = Edu::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factorial_wraps_like_a_u32() {
        assert_eq!(factorial(0), 1);
        assert_eq!(factorial(5), 120);
        assert_eq!(factorial(12), 479_001_600);
        assert_eq!(factorial(13), 1_932_053_504); // 13! mod 2^32
    }
}
