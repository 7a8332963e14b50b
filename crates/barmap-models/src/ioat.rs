//! An Intel I/OAT DMA engine (Crystal Beach DMA, "CBDMA") with one
//! channel, as the Skylake-SP server parts present it (8086:2021, version
//! 3.3): the registers the kernel's ioat driver and its VFIO selftest
//! driver use, with memory-to-memory copies by descriptor.
//!
//! BAR0 is 16 KiB of registers (64-bit BAR): the device registers at 0,
//! channel 0's at 0x80, the MSI-X table (one vector) at 0x2000 and its PBA
//! at 0x3000. Registers take accesses of any width; an access covering
//! several registers reads or writes each of their bytes.
//!
//! | offset | width | access | register |
//! |---|---|---|---|
//! | 0x00 | 1 | RO | CHANCNT: 1 channel |
//! | 0x01 | 1 | RO | XFERCAP: log2 of the largest copy (default 16: 64 KiB) |
//! | 0x02 | 1 | RW | GENCTRL |
//! | 0x03 | 1 | RW | INTRCTRL: 0x01 master enable, 0x02 status (RO), 0x04 interrupt (RO), 0x08 MSI-X vector control |
//! | 0x04 | 4 | RO | ATTNSTATUS: bit 0 while channel 0's interrupt is outstanding |
//! | 0x08 | 1 | RO | VER: 0x33 (option: 0x34) |
//! | 0x0c | 2 | RW | INTRDELAY (14 bits) |
//! | 0x0e | 2 | RO | DEVICE_STATUS: 0 |
//! | 0x10 | 4 | RO | DMA_CAP: 0x40 (block fill) |
//! | 0x80 | 2 | RW | CHANCTRL: 0x01 rearm the interrupt (reads 0), 0x04 completion write on error, 0x08 abort on any error, 0x10 interrupt on error |
//! | 0x82 | 2 | RO | DMA_COMP: 0x0002 |
//! | 0x84 | 1 | WO | CHANCMD: 0x20 reset, 0x10 resume, 0x08 abort, 0x04 suspend (reads 0: every command completes at once) |
//! | 0x86 | 2 | RW | DMACOUNT: descriptors to have completed since the chain address was written |
//! | 0x88 | 8 | RO | CHANSTS: last completed descriptor's address (bits 63:6), status (2:0): 0 active, 1 done (idle), 2 suspended, 3 halted, 4 armed |
//! | 0x90 | 8 | RW | CHAINADDR: the next descriptor's IOVA (a write also restarts DMACOUNT's count at 0) |
//! | 0x98 | 8 | RW | CHANCMP: completion writeback IOVA (CHANSTS is written there) |
//! | 0xa0 | 8 | RO | CDAR: the descriptor being (or last) processed |
//! | 0xa8 | 4 | RW1C | CHANERR |
//! | 0xac | 4 | RW | CHANERRMASK |
//!
//! Config space is 4096 bytes; its extended part holds DMAUNCERRSTS
//! (0x148, RW1C, always 0 here), CHANERR_INT (0x180, RW1C: the channel's
//! errors again, as the chipset logs them) and CHANERRMASK_INT (0x184).
//!
//! A descriptor is 64 bytes at a 64-byte aligned IOVA: size (u32), control
//! (u32: bit 0 interrupt when done, bit 3 completion write, bit 4 fence,
//! bit 5 null, bits 31:24 the operation: 0 copy, 1 block fill), source
//! (for a fill: the 8-byte pattern) and destination IOVAs, and the next
//! descriptor's IOVA. A null descriptor moves nothing but completes like
//! any other (write-back, interrupt).
//!
//! The channel's states, as CHANSTS shows them:
//! - **halted** after a reset (CHANCMD reset, or the device's), an abort
//!   or an error. DMACOUNT writes do nothing; a CHAINADDR write arms the
//!   channel if CHANERR is clear (with errors it stays halted until they
//!   are cleared and it is reset). Suspend leaves it halted.
//! - **armed**: the chain address is known, nothing counted yet. A
//!   DMACOUNT write that counts descriptors starts it.
//! - **active**: the copies run on the device's worker thread from the
//!   descriptor at CHAINADDR, following `next`, until as many descriptors
//!   completed since CHAINADDR was written as DMACOUNT says (16 bits,
//!   wrapping); then **done** (idle). A DMACOUNT write that counts more
//!   goes on from where the chain stopped.
//! - **suspended** by CHANCMD suspend from active, done or armed, at the
//!   next descriptor boundary; RESUME, or a DMACOUNT write that counts
//!   more descriptors, goes on.
//!
//! CHANCMD abort halts the channel at the next descriptor boundary,
//! whatever its state; reset halts it at once, pointers and counts at
//! zero, its errors kept until cleared (the kernel's and DPDK's drivers
//! clear CHANERR before a reset). Completion write-back (a descriptor's
//! bit 3, or an error with CHANCTRL's error-completion bit) writes CHANSTS,
//! the last completed descriptor's address and the status, to CHANCMP.
//!
//! A fault halts the channel: an IOMMU fault reading the descriptor sets
//! CHANERR's next-address bit (0x4), reading the source its source-address
//! bit (0x1), writing the destination (unmapped, or mapped read-only) its
//! destination-address bit (0x2); a misaligned descriptor is 0x8, an
//! unknown operation 0x400, a copy larger than XFERCAP allows 0x800, a
//! failed completion write 0x1000. The status is then halted and CHANERR
//! and CHANERR_INT hold the bit; nothing the program did not map is ever
//! touched.
//!
//! Interrupts: a descriptor with its interrupt bit raises vector 0 when it
//! completes, if CHANCTRL's rearm bit was written since the last one and
//! INTRCTRL enables interrupts (master enable, or MSI-X vector control);
//! by MSI-X (masked: pending), MSI or INTx, as the program enabled. An
//! error interrupts only with CHANCTRL's interrupt-on-error bit.

use crate::host::{DmaSide, IommuFault};
use crate::model::{Ctx, DeviceModel, IrqMode, Layout, RegionKind, Width};

/// Intel's vendor ID.
pub const VENDOR: u16 = 0x8086;
/// PCI_DEVICE_ID_INTEL_IOAT_SKX.
pub const DEVICE: u16 = 0x2021;
/// The version register's value: I/OAT 3.3 (the default).
pub const VERSION: u8 = 0x33;
/// I/OAT 3.4 (Ice Lake's CBDMA): the same channel; DPDK's ioat PMD reports
/// from this version on that the device handles errors
/// (`RTE_DMA_CAPA_HANDLES_ERRORS`), so its error tests run.
pub const VERSION_3_4: u8 = 0x34;
/// The versions the model presents: 3.3 (the kernel's selftest driver
/// accepts 3.2 and 3.3 only) and 3.4.
pub const VERSIONS: [u8; 2] = [VERSION, VERSION_3_4];
/// BAR0's size.
pub const BAR0_SIZE: u64 = 16 << 10;
/// The MSI-X table's offset in BAR0.
pub const MSIX_TABLE: u32 = 0x2000;
/// The MSI-X PBA's offset in BAR0.
pub const MSIX_PBA: u32 = 0x3000;
/// The default XFERCAP: copies of up to 64 KiB per descriptor.
pub const DEFAULT_XFERCAP: u8 = 16;
/// The first channel's registers in BAR0.
pub const CHANNEL: u64 = 0x80;

/// Device register offsets in BAR0.
pub mod reg {
    /// Number of channels (8 bits).
    pub const CHANCNT: u64 = 0x00;
    /// log2 of the largest transfer (8 bits).
    pub const XFERCAP: u64 = 0x01;
    /// General control (8 bits).
    pub const GENCTRL: u64 = 0x02;
    /// Interrupt control (8 bits).
    pub const INTRCTRL: u64 = 0x03;
    /// Channels with an outstanding interrupt (32 bits).
    pub const ATTNSTATUS: u64 = 0x04;
    /// Version (8 bits).
    pub const VER: u64 = 0x08;
    /// Interrupt delay (16 bits).
    pub const INTRDELAY: u64 = 0x0c;
    /// Device status (16 bits).
    pub const DEVICE_STATUS: u64 = 0x0e;
    /// DMA capabilities (32 bits).
    pub const DMA_CAP: u64 = 0x10;
}

/// Channel register offsets, from [`CHANNEL`].
pub mod chan {
    /// Channel control (16 bits).
    pub const CHANCTRL: u64 = 0x00;
    /// DMA compatibility (16 bits).
    pub const DMA_COMP: u64 = 0x02;
    /// Channel command (8 bits).
    pub const CHANCMD: u64 = 0x04;
    /// DMA count (16 bits).
    pub const DMACOUNT: u64 = 0x06;
    /// Channel status (64 bits).
    pub const CHANSTS: u64 = 0x08;
    /// Descriptor chain address (64 bits).
    pub const CHAINADDR: u64 = 0x10;
    /// Completion writeback address (64 bits).
    pub const CHANCMP: u64 = 0x18;
    /// Current descriptor address (64 bits).
    pub const CDAR: u64 = 0x20;
    /// Channel errors (32 bits, write 1 to clear).
    pub const CHANERR: u64 = 0x28;
    /// Channel error mask (32 bits).
    pub const CHANERRMASK: u64 = 0x2c;
}

/// Extended config-space offsets.
pub mod cfg {
    /// Uncorrectable DMA errors (32 bits, write 1 to clear).
    pub const DMAUNCERRSTS: u64 = 0x148;
    /// The channel errors the chipset logged (32 bits, write 1 to clear).
    pub const CHANERR_INT: u64 = 0x180;
    /// Their mask (32 bits).
    pub const CHANERRMASK_INT: u64 = 0x184;
}

/// INTRCTRL: master interrupt enable.
pub const INTRCTRL_MASTER_INT_EN: u8 = 0x01;
/// INTRCTRL: an interrupt is outstanding (read-only).
pub const INTRCTRL_INT_STATUS: u8 = 0x02;
/// INTRCTRL: status and master enable (read-only).
pub const INTRCTRL_INT: u8 = 0x04;
/// INTRCTRL: enable every MSI-X vector.
pub const INTRCTRL_MSIX_VECTOR_CONTROL: u8 = 0x08;

/// CHANCTRL: rearm the channel's interrupt.
pub const CHANCTRL_INT_REARM: u16 = 0x0001;
/// CHANCTRL: write the completion on an error.
pub const CHANCTRL_ERR_COMPLETION_EN: u16 = 0x0004;
/// CHANCTRL: abort on any error (every error halts here).
pub const CHANCTRL_ANY_ERR_ABORT_EN: u16 = 0x0008;
/// CHANCTRL: interrupt on an error.
pub const CHANCTRL_ERR_INT_EN: u16 = 0x0010;

/// CHANCMD: reset the channel.
pub const CHANCMD_RESET: u8 = 0x20;
/// CHANCMD: resume a suspended channel.
pub const CHANCMD_RESUME: u8 = 0x10;
/// CHANCMD: abort (halt) the channel.
pub const CHANCMD_ABORT: u8 = 0x08;
/// CHANCMD: suspend at the next descriptor boundary.
pub const CHANCMD_SUSPEND: u8 = 0x04;

/// CHANSTS status: active.
pub const CHANSTS_ACTIVE: u64 = 0;
/// CHANSTS status: done, or idle (every counted descriptor completed).
pub const CHANSTS_DONE: u64 = 1;
/// CHANSTS status: idle, DPDK's name for [`CHANSTS_DONE`].
pub const CHANSTS_IDLE: u64 = CHANSTS_DONE;
/// CHANSTS status: suspended.
pub const CHANSTS_SUSPENDED: u64 = 2;
/// CHANSTS status: halted (after a reset, an abort or an error).
pub const CHANSTS_HALTED: u64 = 3;
/// CHANSTS status: armed (a halted channel without errors whose chain
/// address was written: the next DMACOUNT write starts it).
pub const CHANSTS_ARMED: u64 = 4;
/// CHANSTS: the status bits.
pub const CHANSTS_STATUS: u64 = 0x7;

/// CHANERR: reading the source failed.
pub const CHANERR_SRC_ADDR: u32 = 0x0001;
/// CHANERR: writing the destination failed.
pub const CHANERR_DEST_ADDR: u32 = 0x0002;
/// CHANERR: reading the next descriptor failed.
pub const CHANERR_NEXT_ADDR: u32 = 0x0004;
/// CHANERR: a descriptor address is not 64-byte aligned.
pub const CHANERR_NEXT_DESC_ALIGN: u32 = 0x0008;
/// CHANERR: an unknown operation.
pub const CHANERR_CONTROL: u32 = 0x0400;
/// CHANERR: a copy larger than XFERCAP allows.
pub const CHANERR_LENGTH: u32 = 0x0800;
/// CHANERR: the completion write failed.
pub const CHANERR_COMPLETION_ADDR: u32 = 0x1000;

/// Descriptor control: interrupt when done.
pub const DESC_INT_EN: u32 = 1 << 0;
/// Descriptor control: write the completion when done.
pub const DESC_COMPL_WRITE: u32 = 1 << 3;
/// Descriptor control: a null descriptor (moves nothing).
pub const DESC_NULL: u32 = 1 << 5;
/// Descriptor control: fence (the next descriptor waits for this one;
/// every descriptor here completes in order anyway).
pub const DESC_FENCE: u32 = 1 << 4;
/// Descriptor operation: copy.
pub const OP_COPY: u8 = 0x00;
/// Descriptor operation: block fill (the source field holds the 8-byte
/// pattern, repeated over `size` bytes at the destination).
pub const OP_FILL: u8 = 0x01;
/// DMA_CAP: block fill.
pub const DMA_CAP_FILL_BLOCK: u32 = 0x0000_0040;
/// Bytes per descriptor.
pub const DESC_SIZE: usize = 64;

/// Bytes copied per run of the worker before it lets register accesses in.
const BUDGET: u64 = 32 << 20;

/// One copy descriptor, as the program lays it out in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Descriptor {
    /// Bytes to copy.
    pub size: u32,
    /// Control bits ([`DESC_INT_EN`], ...) and the operation (bits 31:24).
    pub ctl: u32,
    /// Source IOVA.
    pub src: u64,
    /// Destination IOVA.
    pub dst: u64,
    /// The next descriptor's IOVA.
    pub next: u64,
}

impl Descriptor {
    /// The descriptor's 64 bytes (little-endian, reserved fields zero).
    pub fn to_bytes(&self) -> [u8; DESC_SIZE] {
        let mut b = [0u8; DESC_SIZE];
        b[0..4].copy_from_slice(&self.size.to_le_bytes());
        b[4..8].copy_from_slice(&self.ctl.to_le_bytes());
        b[8..16].copy_from_slice(&self.src.to_le_bytes());
        b[16..24].copy_from_slice(&self.dst.to_le_bytes());
        b[24..32].copy_from_slice(&self.next.to_le_bytes());
        b
    }

    /// The descriptor in `b`.
    pub fn from_bytes(b: &[u8; DESC_SIZE]) -> Descriptor {
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Descriptor {
            size: u32_at(0),
            ctl: u32_at(4),
            src: u64_at(8),
            dst: u64_at(16),
            next: u64_at(24),
        }
    }

    /// The operation (bits 31:24 of the control word).
    pub fn op(&self) -> u8 {
        (self.ctl >> 24) as u8
    }
}

/// The registers, as (offset, bytes), in BAR0.
const REGS: [(u64, u64); 19] = [
    (reg::CHANCNT, 1),
    (reg::XFERCAP, 1),
    (reg::GENCTRL, 1),
    (reg::INTRCTRL, 1),
    (reg::ATTNSTATUS, 4),
    (reg::VER, 1),
    (reg::INTRDELAY, 2),
    (reg::DEVICE_STATUS, 2),
    (reg::DMA_CAP, 4),
    (CHANNEL + chan::CHANCTRL, 2),
    (CHANNEL + chan::DMA_COMP, 2),
    (CHANNEL + chan::CHANCMD, 1),
    (CHANNEL + chan::DMACOUNT, 2),
    (CHANNEL + chan::CHANSTS, 8),
    (CHANNEL + chan::CHAINADDR, 8),
    (CHANNEL + chan::CHANCMP, 8),
    (CHANNEL + chan::CDAR, 8),
    (CHANNEL + chan::CHANERR, 4),
    (CHANNEL + chan::CHANERRMASK, 4),
];

/// The extended config-space registers, as (offset, bytes).
const CFG_REGS: [(u64, u64); 3] = [
    (cfg::DMAUNCERRSTS, 4),
    (cfg::CHANERR_INT, 4),
    (cfg::CHANERRMASK_INT, 4),
];

/// The IOAT device's state.
#[derive(Debug, Clone)]
pub struct Ioat {
    version: u8,
    xfercap: u8,
    genctrl: u8,
    intrctrl: u8,
    intrdelay: u16,
    attn: bool,
    chanctrl: u16,
    armed: bool,
    dmacount: u16,
    completed: u16,
    status: u64,
    completed_desc: u64,
    chainaddr: u64,
    next: u64,
    chancmp: u64,
    cdar: u64,
    chanerr: u32,
    chanerrmask: u32,
    chanerr_int: u32,
    chanerrmask_int: u32,
    dmauncerrsts: u32,
    copied: u64,
    descriptors: u64,
}

impl Default for Ioat {
    fn default() -> Self {
        Ioat::new(DEFAULT_XFERCAP)
    }
}

/// Where `(off, n)` meets the register at `(base, size)`: the byte range
/// of the access and of the register that overlap.
fn overlap(off: u64, n: u64, base: u64, size: u64) -> Option<(u64, u64, u64)> {
    let start = off.max(base);
    let end = (off + n).min(base + size);
    (start < end).then_some((start, end, start - base))
}

fn bytes_mask(len: u64) -> u64 {
    if len >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * len)) - 1
    }
}

impl Ioat {
    /// A channel whose copies may be up to `2^xfercap` bytes each
    /// (12..=30; the kernel's drivers read XFERCAP as that log).
    pub fn new(xfercap: u8) -> Ioat {
        Ioat::with_version(xfercap, VERSION)
    }

    /// The same channel presenting `version` (one of [`VERSIONS`]: only
    /// the VER register differs; the error behaviour, a halt with CHANERR
    /// and the completion written back, is the same on both).
    pub fn with_version(xfercap: u8, version: u8) -> Ioat {
        Ioat {
            version,
            xfercap,
            genctrl: 0,
            intrctrl: 0,
            intrdelay: 0,
            attn: false,
            chanctrl: 0,
            armed: false,
            dmacount: 0,
            completed: 0,
            status: CHANSTS_HALTED,
            completed_desc: 0,
            chainaddr: 0,
            next: 0,
            chancmp: 0,
            cdar: 0,
            chanerr: 0,
            chanerrmask: 0,
            chanerr_int: 0,
            chanerrmask_int: 0,
            dmauncerrsts: 0,
            copied: 0,
            descriptors: 0,
        }
    }

    /// Bytes copied since the last reset.
    pub fn copied(&self) -> u64 {
        self.copied
    }

    /// Descriptors completed since the last reset.
    pub fn descriptors(&self) -> u64 {
        self.descriptors
    }

    fn chansts(&self) -> u64 {
        (self.completed_desc & !0x3f) | self.status
    }

    fn intrctrl(&self) -> u8 {
        let mut v = self.intrctrl & (INTRCTRL_MASTER_INT_EN | INTRCTRL_MSIX_VECTOR_CONTROL);
        if self.attn {
            v |= INTRCTRL_INT_STATUS;
            if self.intrctrl & INTRCTRL_MASTER_INT_EN != 0 {
                v |= INTRCTRL_INT;
            }
        }
        v
    }

    fn reg_value(&self, base: u64) -> u64 {
        match base {
            reg::CHANCNT => 1,
            reg::XFERCAP => u64::from(self.xfercap),
            reg::GENCTRL => u64::from(self.genctrl),
            reg::INTRCTRL => u64::from(self.intrctrl()),
            reg::ATTNSTATUS => u64::from(self.attn),
            reg::VER => u64::from(self.version),
            reg::INTRDELAY => u64::from(self.intrdelay),
            reg::DEVICE_STATUS => 0,
            reg::DMA_CAP => u64::from(DMA_CAP_FILL_BLOCK),
            b if b == CHANNEL + chan::CHANCTRL => u64::from(self.chanctrl),
            b if b == CHANNEL + chan::DMA_COMP => 0x0002,
            b if b == CHANNEL + chan::CHANCMD => 0,
            b if b == CHANNEL + chan::DMACOUNT => u64::from(self.dmacount),
            b if b == CHANNEL + chan::CHANSTS => self.chansts(),
            b if b == CHANNEL + chan::CHAINADDR => self.chainaddr,
            b if b == CHANNEL + chan::CHANCMP => self.chancmp,
            b if b == CHANNEL + chan::CDAR => self.cdar,
            b if b == CHANNEL + chan::CHANERR => u64::from(self.chanerr),
            b if b == CHANNEL + chan::CHANERRMASK => u64::from(self.chanerrmask),
            _ => 0,
        }
    }

    /// A write of the bits `mask` (in the register's own coordinates) of
    /// `value` to the register at `base`.
    fn reg_write(&mut self, ctx: &mut Ctx<'_>, base: u64, mask: u64, value: u64) {
        let merge = |old: u64| (old & !mask) | (value & mask);
        match base {
            reg::GENCTRL => self.genctrl = merge(u64::from(self.genctrl)) as u8,
            reg::INTRCTRL => {
                let rw = u64::from(INTRCTRL_MASTER_INT_EN | INTRCTRL_MSIX_VECTOR_CONTROL);
                self.intrctrl = (merge(u64::from(self.intrctrl)) & rw) as u8;
            }
            reg::INTRDELAY => self.intrdelay = (merge(u64::from(self.intrdelay)) & 0x3fff) as u16,
            b if b == CHANNEL + chan::CHANCTRL => {
                let v = merge(u64::from(self.chanctrl)) as u16;
                if v & CHANCTRL_INT_REARM != 0 {
                    self.rearm(ctx);
                }
                self.chanctrl = v & !CHANCTRL_INT_REARM;
            }
            b if b == CHANNEL + chan::CHANCMD => self.command(ctx, (value & mask) as u8),
            b if b == CHANNEL + chan::DMACOUNT => {
                self.dmacount = merge(u64::from(self.dmacount)) as u16;
                self.start(ctx);
            }
            b if b == CHANNEL + chan::CHAINADDR => {
                self.chainaddr = merge(self.chainaddr);
                self.next = self.chainaddr;
                self.completed = 0;
                // A halted channel whose errors were cleared is armed by
                // its chain address; one with errors stays halted.
                if self.status == CHANSTS_HALTED && self.chanerr == 0 {
                    self.status = CHANSTS_ARMED;
                }
            }
            b if b == CHANNEL + chan::CHANCMP => self.chancmp = merge(self.chancmp),
            b if b == CHANNEL + chan::CHANERR => self.chanerr &= !((value & mask) as u32),
            b if b == CHANNEL + chan::CHANERRMASK => {
                self.chanerrmask = merge(u64::from(self.chanerrmask)) as u32
            }
            _ => {}
        }
    }

    fn rearm(&mut self, ctx: &mut Ctx<'_>) {
        self.armed = true;
        if self.attn {
            self.attn = false;
            if ctx.irq_mode() == IrqMode::Intx {
                ctx.set_intx(false);
            }
        }
    }

    fn command(&mut self, ctx: &mut Ctx<'_>, cmd: u8) {
        if cmd & CHANCMD_RESET != 0 {
            self.reset_channel();
            return;
        }
        if cmd & CHANCMD_ABORT != 0 {
            // Stops at once (the worker is between descriptors whenever a
            // register access runs): halted, no error of its own.
            self.status = CHANSTS_HALTED;
            return;
        }
        if cmd & CHANCMD_SUSPEND != 0 && self.status != CHANSTS_HALTED {
            // Active, idle or armed: suspended at this descriptor
            // boundary. A halted channel has nothing to suspend and stays
            // halted (its drivers then reset it).
            self.status = CHANSTS_SUSPENDED;
        }
        if cmd & CHANCMD_RESUME != 0 && self.status == CHANSTS_SUSPENDED {
            self.status = CHANSTS_ACTIVE;
            self.start(ctx);
        }
    }

    /// CHANCMD's reset: the channel halted, its pointers and counts at
    /// zero; the errors stay until the driver clears them.
    fn reset_channel(&mut self) {
        self.chanctrl = 0;
        self.armed = false;
        self.attn = false;
        self.dmacount = 0;
        self.completed = 0;
        self.status = CHANSTS_HALTED;
        self.completed_desc = 0;
        self.chainaddr = 0;
        self.next = 0;
        self.chancmp = 0;
        self.cdar = 0;
    }

    /// After a DMACOUNT write (or a resume): active if descriptors remain
    /// (a suspended or armed channel too: new descriptors wake it), the
    /// work left to the worker. A halted channel stays halted: it needs a
    /// chain address (which arms it) first.
    fn start(&mut self, ctx: &mut Ctx<'_>) {
        if self.status == CHANSTS_HALTED {
            return;
        }
        if self.completed == self.dmacount {
            if self.status != CHANSTS_ARMED {
                self.status = CHANSTS_DONE;
            }
            return;
        }
        self.status = CHANSTS_ACTIVE;
        ctx.kick();
    }

    /// Processes descriptors until done, suspended, halted, or `budget`
    /// bytes were copied; returns whether work remains.
    fn run(&mut self, ctx: &mut Ctx<'_>, budget: u64) -> bool {
        let mut moved = 0u64;
        while self.status == CHANSTS_ACTIVE {
            if self.completed == self.dmacount {
                self.status = CHANSTS_DONE;
                return false;
            }
            if moved >= budget {
                return true;
            }
            let at = self.next;
            self.cdar = at;
            if at % DESC_SIZE as u64 != 0 {
                self.fail(ctx, CHANERR_NEXT_DESC_ALIGN);
                return false;
            }
            let mut raw = [0u8; DESC_SIZE];
            if ctx.dma_read(at, &mut raw).is_err() {
                self.fail(ctx, CHANERR_NEXT_ADDR);
                return false;
            }
            let d = Descriptor::from_bytes(&raw);
            if d.op() != OP_COPY && d.op() != OP_FILL {
                self.fail(ctx, CHANERR_CONTROL);
                return false;
            }
            if u64::from(d.size) > 1u64 << self.xfercap {
                self.fail(ctx, CHANERR_LENGTH);
                return false;
            }
            if d.ctl & DESC_NULL == 0 && d.size > 0 {
                let done = if d.op() == OP_FILL {
                    fill(ctx, d.src, d.dst, d.size as usize)
                } else {
                    ctx.dma_copy(d.src, d.dst, u64::from(d.size))
                };
                if let Err((side, fault)) = done {
                    tracing::debug!(%fault, ?side, op = d.op(), "ioat: transfer refused");
                    let bit = match side {
                        DmaSide::Read => CHANERR_SRC_ADDR,
                        DmaSide::Write => CHANERR_DEST_ADDR,
                    };
                    self.fail(ctx, bit);
                    return false;
                }
                moved += u64::from(d.size);
                self.copied += u64::from(d.size);
            }
            moved += DESC_SIZE as u64;
            self.completed_desc = at;
            self.completed = self.completed.wrapping_add(1);
            self.descriptors += 1;
            self.next = d.next;
            if self.completed == self.dmacount {
                self.status = CHANSTS_DONE;
            }
            if d.ctl & DESC_COMPL_WRITE != 0 && !self.write_completion(ctx) {
                return false;
            }
            if d.ctl & DESC_INT_EN != 0 {
                self.interrupt(ctx);
            }
        }
        false
    }

    /// Writes CHANSTS to CHANCMP; false (and halted) if that faults.
    fn write_completion(&mut self, ctx: &mut Ctx<'_>) -> bool {
        let sts = self.chansts();
        if ctx.dma_write(self.chancmp, &sts.to_le_bytes()).is_err() {
            self.fail(ctx, CHANERR_COMPLETION_ADDR);
            return false;
        }
        true
    }

    /// Halts the channel with `bit` in CHANERR and CHANERR_INT.
    fn fail(&mut self, ctx: &mut Ctx<'_>, bit: u32) {
        self.chanerr |= bit;
        self.chanerr_int |= bit;
        self.status = CHANSTS_HALTED;
        if self.chanctrl & CHANCTRL_ERR_COMPLETION_EN != 0 && bit != CHANERR_COMPLETION_ADDR {
            let sts = self.chansts();
            if ctx.dma_write(self.chancmp, &sts.to_le_bytes()).is_err() {
                self.chanerr |= CHANERR_COMPLETION_ADDR;
                self.chanerr_int |= CHANERR_COMPLETION_ADDR;
            }
        }
        if self.chanctrl & CHANCTRL_ERR_INT_EN != 0 {
            self.interrupt(ctx);
        }
    }

    fn interrupt(&mut self, ctx: &mut Ctx<'_>) {
        let enabled = self.intrctrl & (INTRCTRL_MASTER_INT_EN | INTRCTRL_MSIX_VECTOR_CONTROL) != 0;
        if !self.armed || !enabled {
            return;
        }
        self.armed = false;
        self.attn = true;
        ctx.raise(0);
    }

    fn cfg_value(&self, base: u64) -> u64 {
        match base {
            cfg::DMAUNCERRSTS => u64::from(self.dmauncerrsts),
            cfg::CHANERR_INT => u64::from(self.chanerr_int),
            cfg::CHANERRMASK_INT => u64::from(self.chanerrmask_int),
            _ => 0,
        }
    }
}

/// A block fill: `len` bytes at `dst`, the 8 bytes of `pattern` (little
/// endian, as the descriptor holds it) over and over.
fn fill(
    ctx: &mut Ctx<'_>,
    pattern: u64,
    dst: u64,
    len: usize,
) -> Result<(), (DmaSide, IommuFault)> {
    let bytes = pattern.to_le_bytes();
    let data: Vec<u8> = (0..len).map(|i| bytes[i % 8]).collect();
    ctx.dma_write(dst, &data).map_err(|f| (DmaSide::Write, f))
}

/// Reads the bytes `(off, n)` of the registers `regs` with `value`.
fn compose(regs: &[(u64, u64)], off: u64, n: u64, value: impl Fn(u64) -> u64) -> u64 {
    let mut out = 0u64;
    for &(base, size) in regs {
        if let Some((start, end, in_reg)) = overlap(off, n, base, size) {
            let bytes = (value(base) >> (8 * in_reg)) & bytes_mask(end - start);
            out |= bytes << (8 * (start - off));
        }
    }
    out
}

/// The registers of `regs` that `(off, n)` writes: (base, mask, value),
/// mask and value in the register's coordinates.
fn decompose(regs: &[(u64, u64)], off: u64, n: u64, value: u64) -> Vec<(u64, u64, u64)> {
    regs.iter()
        .filter_map(|&(base, size)| {
            let (start, end, in_reg) = overlap(off, n, base, size)?;
            let bits = (value >> (8 * (start - off))) & bytes_mask(end - start);
            Some((
                base,
                bytes_mask(end - start) << (8 * in_reg),
                bits << (8 * in_reg),
            ))
        })
        .collect()
}

impl DeviceModel for Ioat {
    fn layout(&self) -> Layout {
        Layout::new(VENDOR, DEVICE)
            .class(0x08_80_00) // base system peripheral, other
            .revision(0x04)
            .intx()
            .region(
                0,
                RegionKind::Registers {
                    size: BAR0_SIZE,
                    mmap: true,
                    bits64: true,
                },
            )
            .msix(1, 0, MSIX_TABLE, MSIX_PBA)
            .extended_config()
    }

    fn read(&mut self, _: &mut Ctx<'_>, _: u32, offset: u64, width: Width) -> u64 {
        compose(&REGS, offset, width.bytes() as u64, |b| self.reg_value(b))
    }

    fn write(&mut self, ctx: &mut Ctx<'_>, _: u32, offset: u64, width: Width, value: u64) {
        for (base, mask, v) in decompose(&REGS, offset, width.bytes() as u64, value) {
            self.reg_write(ctx, base, mask, v);
        }
    }

    fn config_read(&mut self, _: &mut Ctx<'_>, offset: u64, width: Width) -> u64 {
        compose(&CFG_REGS, offset, width.bytes() as u64, |b| {
            self.cfg_value(b)
        })
    }

    fn config_write(&mut self, _: &mut Ctx<'_>, offset: u64, width: Width, value: u64) {
        for (base, mask, v) in decompose(&CFG_REGS, offset, width.bytes() as u64, value) {
            let clear = (v & mask) as u32;
            match base {
                cfg::DMAUNCERRSTS => self.dmauncerrsts &= !clear,
                cfg::CHANERR_INT => self.chanerr_int &= !clear,
                cfg::CHANERRMASK_INT => {
                    let old = u64::from(self.chanerrmask_int);
                    self.chanerrmask_int = ((old & !mask) | (v & mask)) as u32;
                }
                _ => {}
            }
        }
    }

    fn reset(&mut self) {
        *self = Ioat::with_version(self.xfercap, self.version);
    }

    fn work(&mut self, ctx: &mut Ctx<'_>) {
        if self.run(ctx, BUDGET) {
            ctx.kick();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_descriptor_round_trips_through_its_bytes() {
        let d = Descriptor {
            size: 4096,
            ctl: DESC_INT_EN | DESC_COMPL_WRITE,
            src: 0x1000,
            dst: 0x2000,
            next: 0x40,
        };
        assert_eq!(Descriptor::from_bytes(&d.to_bytes()), d);
        assert_eq!(d.op(), OP_COPY);
    }

    #[test]
    fn accesses_spanning_registers_compose_their_bytes() {
        let regs = [(0u64, 1u64), (1, 1), (4, 4)];
        let v = compose(&regs, 0, 8, |b| [0xaa, 0xbb, 0, 0, 0x1122_3344][b as usize]);
        assert_eq!(v, 0x1122_3344_0000_bbaa);
        assert_eq!(compose(&regs, 5, 2, |_| 0x1122_3344), 0x2233);
        let w = decompose(&regs, 4, 2, 0xbeef);
        assert_eq!(w, vec![(4, 0xffff, 0xbeef)]);
        let w = decompose(&regs, 0, 8, 0x0102_0304_0506_0708);
        assert_eq!(w[0], (0, 0xff, 0x08));
        assert_eq!(w[2], (4, 0xffff_ffff, 0x0102_0304));
    }
}
