//! An NVIDIA GPU as far as one of its falcon microcontrollers' DMA engine
//! goes: the subset the kernel's VFIO selftest driver
//! (`tools/testing/selftests/vfio/lib/drivers/nv_falcon`) drives to copy
//! memory, for any of the GPUs that driver knows, Kepler through Hopper
//! ([`CHIPS`]; default the Tesla T4, 10de:1eb8, option `id=0x....`).
//!
//! Built from public references: the selftest driver's own `hw.h`, the
//! kernel's nova-core register definitions (`drivers/gpu/nova-core/regs.rs`:
//! the falcon's DMACTL, DMATRF* and FBIF fields) and nouveau's falcon code
//! (`drivers/gpu/drm/nouveau/nvkm/falcon`), and envytools' notes on PMC.
//!
//! **The function.** Vendor 0x10de, the chip's PCI device ID, class VGA
//! (0x030000) for the GeForce and Quadro boards and 3D controller
//! (0x030200) for the others, revision the low byte of PMC_BOOT_0 (as on
//! the hardware), INTx and a one-vector MSI capability (nothing raises
//! them: the driver polls). BAR0 is 16 MiB of 32-bit registers, mmappable
//! (accesses are trapped); a real board's BAR1 and BAR3 (the framebuffer
//! and instance-memory apertures) are absent.
//!
//! **Registers** (BAR0 offsets; "falcon" is the one falcon the driver uses
//! on the chip, at its base `B`: the PMU at 0x10a000 up to Pascal and on
//! Ada, the GSP at 0x110000 on Volta, Turing and Ampere, the OFA at
//! 0x844000 on Hopper; its FBIF (frame-buffer interface) at `F`:
//! `B + 0x600` on Kepler and the first Maxwell and on the GSP, `B + 0xe00`
//! on the later PMUs, `B + 0x400` on the OFA):
//!
//! | offset | register | behaviour |
//! |---|---|---|
//! | 0x000 | PMC_BOOT_0 | RO: the chip's identity (architecture in bits 28:24, implementation 23:20, revision 7:0) |
//! | 0x200 | PMC_ENABLE | RW: up to Pascal's GP100, the falcon runs while its bits are set (bit 13 PWR, and bit 29 HUB on Kepler and the first Maxwell) |
//! | 0x100b20 | memory clear | RO, Turing on: 1 (the boot-time scrub of video memory finished) |
//! | 0x100f04 | DMA address top bits | RW: bits 63:47 of every DMA address (17 bits) |
//! | 0x118234 | boot complete | RO, Turing to Ada: 0x3ff |
//! | 0x0200bc | FSP boot complete | RO, Hopper: 0xff |
//! | B+0x10c | DMACTL | bit 0 require-context (RW, set by a falcon reset), bits 1 and 2 DMEM and IMEM scrubbing (RO: set for the first read after a falcon reset, then clear) |
//! | B+0x110 | DMATRFBASE | RW: DMA address bits 39:8 |
//! | B+0x114 | DMATRFMOFFS | RW: the DMEM offset (bits 23:0) |
//! | B+0x118 | DMATRFCMD | a write starts a transfer (bit 5 write: DMEM to memory, else memory to DMEM; bits 10:8 size 4 << n, n up to 6; bits 14:12 the FBIF context; bit 4 IMEM); reads give it back with bit 1 (idle) set once it completed |
//! | B+0x11c | DMATRFFBOFFS | RW: added to the address (the driver's offset in the 256-byte block) |
//! | B+0x128 | DMATRFBASE1 | RW (9 bits): its bits 6:0 are address bits 46:40 |
//! | B+0x1c0 + 8p, B+0x1c4 + 8p | DMEMC, DMEMD (ports 0..3) | DMEM by port: DMEMC a byte offset (bits 23:2) with auto-increment on read (bit 24) and write (bit 25); DMEMD the word there |
//! | B+0x3c0 | engine reset | RW bit 0, from Pascal's GP10x on: the falcon is held in reset while it is set |
//! | B+0x40c | mailbox | RW scratch |
//! | B+0x1668 | core select | RW (the RISC-V/falcon core choice; the falcon core is the only one) |
//! | F+4n (n 0..7) | FBIF_TRANSCFG(n) | RW: context n's target (bits 1:0: 0 video memory, 1 coherent and 2 non-coherent system memory) and memory type (bit 2: physical) |
//! | F+0x24 | FBIF_CTL | RW: bit 7 allows physical DMA without a context |
//! | F+0x84 | FBIF_CTL2 | RW |
//! | 0x8f2ac0 + 8c, 0x8f2ac4 + 8c | FSP EMEMC, EMEMD (Hopper) | the FSP's 4 KiB message memory by port, as DMEMC/DMEMD |
//! | 0x8f2c00 + 8c, 0x8f2c04 + 8c | FSP command queue head, tail (Hopper) | RW: a head write with head != tail hands the FSP the message from head to tail (inclusive, byte offsets in EMEM) |
//! | 0x8f2c80 + 8c, 0x8f2c84 + 8c | FSP message queue head, tail (Hopper) | RW: the FSP's answers |
//!
//! Other offsets read 0 and ignore writes. Registers are 32 bits: an
//! 8-byte access is two 4-byte ones (low first), a narrower read returns
//! the register's bytes, a narrower write merges into the register and
//! acts as a write of the result.
//!
//! **The falcon's life.** It comes up (power-on) running and out of reset,
//! as the VBIOS leaves it. It is *down* while held in reset (its PMC bits
//! clear up to GP100, its engine-reset bit set) and, on Hopper, until the
//! FSP enabled its DMA (below): then its registers read 0xbadf5620 (the
//! priv-error value the driver's Ada mailbox check and Hopper support
//! check look for) and ignore writes, except the engine-reset register.
//! Coming up is a falcon reset: DMEM zeroed, DMACTL at require-context
//! with scrubbing shown once, the DMA and FBIF registers zero.
//!
//! **A transfer** moves `4 << n` bytes between DMEM at DMATRFMOFFS and the
//! IOVA `(top << 47 | base1 << 40 | base << 8) + fboffs`, through the
//! IOMMU table the device is attached to, at the DMATRFCMD write. It
//! completes (idle set) only if: the falcon is up, DMACTL's
//! require-context bit is clear (contexts, the falcon's virtual-memory
//! DMA, are not modelled), FBIF_CTL allows physical DMA without a
//! context, the command's FBIF context is physical system memory, the
//! size is valid and the command not an IMEM one, the address and the
//! DMEM offset are aligned to the size, and the IOMMU allows the access
//! (bus mastering on, the IOVA mapped, writable for a write). Otherwise
//! it does not complete: DMATRFCMD reads without its idle bit, nothing
//! beyond what the IOMMU allowed is touched, and [`NvFalcon::errors`]
//! counts it; the next DMATRFCMD write starts a new transfer (the stalled
//! one is dropped). The driver sees that as its only error: `dma_done`
//! times out and its memcpy returns `-ETIMEDOUT`. What a real falcon does
//! on an IOMMU fault is not public (a write the IOMMU drops may well look
//! complete to it); the model picks what the driver can report.
//!
//! **The FSP** (Hopper): the driver enables the OFA's DMA with one MCTP
//! message through channel 2. A message is whole (start and end of
//! message in its first word), an NVIDIA vendor-defined one (type 0x7e,
//! vendor 0x10de, its NVDM type in bits 31:24 of the second word). The
//! FSP answers every message on the channel's message queue with five
//! words at the channel's EMEM (1 KiB per channel): the MCTP header, a
//! response header (NVDM type 0x15), 0, the command's NVDM type and a
//! status: 0 for FBDMA (0x22) with sub-command 1 (enable), which makes the
//! OFA falcon accessible, 1 for anything else. The command queue is then
//! empty (tail = head); the program acknowledges by writing the message
//! tail back to its head.
//!
//! **Why this is enough for the driver.** Its probe reads the vendor, the
//! class and PMC_BOOT_0; its init enables bus mastering, on Hopper does
//! the FSP exchange and reads 0x8443c0, polls boot and memory-clear
//! completion from Turing on, disables and re-enables the falcon (PMC or
//! engine reset), clears the core select bits, waits for scrubbing, sets
//! DMEM port 0, the FBIF context 0 to physical coherent system memory,
//! FBIF_CTL's physical-mode bits and clears require-context; its copies
//! are pairs of transfers (memory to DMEM offset 0, DMEM to memory) of up
//! to 256 bytes inside a 256-byte block, each polled for idle; its remove
//! disables the falcon. Every one of those registers is here.
//!
//! **What a driver needing more would meet.** No falcon code execution
//! (IMEM, CPUCTL, BOOTVEC, the falcon's interrupts and mailboxes do
//! nothing; no firmware runs, so nouveau and nova-core cannot boot the
//! GSP or load ACR), no other falcon on the chip (the PMU on a GSP chip,
//! SEC2, NVDEC...), no video memory (a transfer to FBIF target 0 does not
//! complete), no virtual-memory contexts (require-context set stalls every
//! transfer), no FSP command other than FBDMA enable, no BAR1/BAR3, no
//! PRI error for the many unmodelled registers (they read 0), and
//! transfers complete at once (the DMA queue of real falcons, DMATRFCMD's
//! full bit, never fills).

use crate::model::{Ctx, DeviceModel, Layout, RegionKind, Width};

/// NVIDIA's vendor ID.
pub const VENDOR: u16 = 0x10de;
/// BAR0's size: 16 MiB, as on the boards.
pub const BAR0_SIZE: u64 = 16 << 20;
/// The default chip's PCI device ID: the Tesla T4 (TU104GL, Turing).
pub const DEFAULT_DEVICE: u16 = 0x1eb8;
/// What a down falcon's registers read: a priv-ring error value (the
/// driver's `NV_FALCON_MAILBOX_RESET_MAGIC`).
pub const PRI_ERROR: u32 = 0xbadf_5620;
/// DMEM bytes of the modelled falcon.
pub const DMEM_SIZE: usize = 64 << 10;
/// EMEM bytes of the FSP (Hopper).
pub const EMEM_SIZE: usize = 4 << 10;
/// EMEM bytes per FSP channel.
pub const FSP_CHANNEL_SIZE: u32 = 1024;

/// A GPU the model can present: one the selftest driver has verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chip {
    /// The board's name.
    pub name: &'static str,
    /// Its PCI device ID.
    pub device: u16,
    /// Its PMC_BOOT_0 value.
    pub boot0: u32,
    /// Its PCI class code.
    pub class: u32,
}

const VGA: u32 = 0x03_00_00;
const D3: u32 = 0x03_02_00;

/// The chips: the driver's verified list, each with its PCI device ID
/// (from the PCI ID repository) and PMC_BOOT_0.
pub const CHIPS: &[Chip] = &[
    chip("GRID K520", 0x118a, 0x0e40_a0a2, D3),
    chip("GeForce GTX 660", 0x11c0, 0x0e60_00a1, VGA),
    chip("Quadro K4000", 0x11fa, 0x0e63_a0a1, VGA),
    chip("Tesla K80", 0x102d, 0x0f22_d0a1, D3),
    chip("GeForce GT 635", 0x1280, 0x1080_00a1, VGA),
    chip("GeForce GTX 750", 0x1381, 0x1170_10a2, VGA),
    chip("GeForce GTX 745", 0x1382, 0x1170_20a2, VGA),
    chip("Tesla M60", 0x13f2, 0x1243_20a1, D3),
    chip("Tesla P100 PCIe 16GB", 0x15f8, 0x1300_00a1, D3),
    chip("Tesla P4", 0x1bb3, 0x1340_00a1, D3),
    chip("Tesla P40", 0x1b38, 0x1320_00a1, D3),
    chip("Tesla V100 PCIe 16GB", 0x1db4, 0x1400_00a1, D3),
    chip("Tesla T4", 0x1eb8, 0x1640_00a1, D3),
    chip("A16", 0x25b6, 0xb770_00a1, D3),
    chip("A100 PCIe 40GB", 0x20f1, 0x1700_00a1, D3),
    chip("A10", 0x2236, 0xb720_00a1, D3),
    chip("H100 PCIe", 0x2331, 0x1800_00a1, D3),
    chip("L4", 0x27b8, 0x1940_00a1, D3),
    chip("L40S", 0x26b9, 0x1920_00a1, D3),
];

const fn chip(name: &'static str, device: u16, boot0: u32, class: u32) -> Chip {
    Chip {
        name,
        device,
        boot0,
        class,
    }
}

/// The chip with PCI device ID `device`.
pub fn chip_by_device(device: u16) -> Option<Chip> {
    CHIPS.iter().copied().find(|c| c.device == device)
}

/// A GPU architecture, as PMC_BOOT_0 names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Arch {
    /// GK1xx, GK20x.
    Kepler,
    /// GM10x.
    MaxwellGen1,
    /// GM20x.
    MaxwellGen2,
    /// GP100.
    Pascal,
    /// GP10x (engine reset instead of PMC).
    Pascal10x,
    /// GV100.
    Volta,
    /// TU10x.
    Turing,
    /// GA10x.
    Ampere,
    /// AD10x.
    Ada,
    /// GH100.
    Hopper,
}

impl Arch {
    /// The architecture of PMC_BOOT_0 `boot0`: bits 28:24, and for 0x13
    /// the implementation (bits 23:20) to tell GP100 from GP10x.
    pub fn of(boot0: u32) -> Option<Arch> {
        Some(match (boot0 >> 24) & 0x1f {
            0x0e..=0x10 => Arch::Kepler,
            0x11 => Arch::MaxwellGen1,
            0x12 => Arch::MaxwellGen2,
            0x13 if (boot0 >> 20) & 0xf == 0 => Arch::Pascal,
            0x13 => Arch::Pascal10x,
            0x14 => Arch::Volta,
            0x16 => Arch::Turing,
            0x17 => Arch::Ampere,
            0x18 => Arch::Hopper,
            0x19 => Arch::Ada,
            _ => return None,
        })
    }

    /// The PMC_ENABLE bits the falcon runs under (0: engine reset only).
    pub fn pmc_mask(self) -> u32 {
        match self {
            Arch::Kepler | Arch::MaxwellGen1 => PMC_ENABLE_PWR | PMC_ENABLE_HUB,
            Arch::MaxwellGen2 | Arch::Pascal => PMC_ENABLE_PWR,
            _ => 0,
        }
    }

    /// The falcon's base and its FBIF's, in BAR0.
    pub fn falcon(self) -> (u32, u32) {
        match self {
            Arch::Kepler | Arch::MaxwellGen1 => (PMU, PMU + 0x600),
            Arch::MaxwellGen2 | Arch::Pascal | Arch::Pascal10x | Arch::Ada => (PMU, PMU + 0xe00),
            Arch::Volta | Arch::Turing | Arch::Ampere => (GSP, GSP + 0x600),
            Arch::Hopper => (OFA, OFA + 0x400),
        }
    }
}

/// The PMU falcon's base.
pub const PMU: u32 = 0x10_a000;
/// The GSP falcon's base.
pub const GSP: u32 = 0x11_0000;
/// The OFA falcon's base (Hopper).
pub const OFA: u32 = 0x84_4000;
/// Bytes of a falcon's register window.
pub const FALCON_WINDOW: u32 = 0x2000;

/// PMC_ENABLE: the PMU (PWR).
pub const PMC_ENABLE_PWR: u32 = 1 << 13;
/// PMC_ENABLE: the memory hub.
pub const PMC_ENABLE_HUB: u32 = 1 << 29;

/// Global register offsets in BAR0.
pub mod reg {
    /// The chip's identity.
    pub const PMC_BOOT_0: u32 = 0x0;
    /// Engine enables.
    pub const PMC_ENABLE: u32 = 0x200;
    /// Memory clear finished (Turing on).
    pub const MEM_CLEAR: u32 = 0x10_0b20;
    /// DMA address bits 63:47.
    pub const DMA_ADDR_TOP: u32 = 0x10_0f04;
    /// Boot complete (Turing to Ada).
    pub const BOOT_COMPLETE: u32 = 0x11_8234;
    /// FSP boot complete (Hopper).
    pub const FSP_BOOT_COMPLETE: u32 = 0x2_00bc;
    /// FSP EMEM port 0's control (port c at + 8c).
    pub const FSP_EMEMC: u32 = 0x8f_2ac0;
    /// FSP command queue 0's head (tail at + 4; queue c at + 8c).
    pub const FSP_QUEUE_HEAD: u32 = 0x8f_2c00;
    /// FSP message queue 0's head (tail at + 4; queue c at + 8c).
    pub const FSP_MSG_QUEUE_HEAD: u32 = 0x8f_2c80;
}

/// Falcon register offsets, from its base.
pub mod falcon {
    /// DMA control.
    pub const DMACTL: u32 = 0x10c;
    /// DMA address bits 39:8.
    pub const DMATRFBASE: u32 = 0x110;
    /// DMEM offset.
    pub const DMATRFMOFFS: u32 = 0x114;
    /// DMA command.
    pub const DMATRFCMD: u32 = 0x118;
    /// Offset added to the address.
    pub const DMATRFFBOFFS: u32 = 0x11c;
    /// DMA address bits 46:40.
    pub const DMATRFBASE1: u32 = 0x128;
    /// DMEM port 0's control (port p at + 8p).
    pub const DMEMC: u32 = 0x1c0;
    /// Engine reset.
    pub const ENGINE_RESET: u32 = 0x3c0;
    /// A mailbox (scratch).
    pub const MAILBOX_TEST: u32 = 0x40c;
    /// Core select.
    pub const CORE_SELECT: u32 = 0x1668;
}

/// FBIF register offsets, from its base.
pub mod fbif {
    /// Context 0's TRANSCFG (context n at + 4n).
    pub const TRANSCFG: u32 = 0x00;
    /// Control.
    pub const CTL: u32 = 0x24;
    /// Control 2.
    pub const CTL2: u32 = 0x84;
}

/// DMACTL: a transfer needs a context.
pub const DMACTL_REQUIRE_CTX: u32 = 1 << 0;
/// DMACTL: DMEM and IMEM scrubbing in progress.
pub const DMACTL_SCRUBBING: u32 = 0x6;
/// DMATRFCMD: the DMA queue is full (never, here).
pub const CMD_FULL: u32 = 1 << 0;
/// DMATRFCMD: idle (the last transfer completed).
pub const CMD_IDLE: u32 = 1 << 1;
/// DMATRFCMD: IMEM rather than DMEM.
pub const CMD_IMEM: u32 = 1 << 4;
/// DMATRFCMD: DMEM to memory.
pub const CMD_WRITE: u32 = 1 << 5;
/// DMEMC/EMEMC: auto-increment on read.
pub const MEMC_AINCR: u32 = 1 << 24;
/// DMEMC/EMEMC: auto-increment on write.
pub const MEMC_AINCW: u32 = 1 << 25;
/// FBIF_CTL: physical DMA without a context allowed.
pub const FBIF_CTL_ALLOW_PHYS_NO_CTX: u32 = 1 << 7;
/// FBIF_TRANSCFG: physical memory type.
pub const TRANSCFG_PHYSICAL: u32 = 1 << 2;
/// NVDM type of the FSP's answers.
pub const NVDM_RESPONSE: u32 = 0x15;
/// NVDM type: FBDMA control.
pub const NVDM_FBDMA: u32 = 0x22;

const DMEM_PORTS: u32 = 4;
const FSP_CHANNELS: u32 = 8;

/// Why a transfer did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferError {
    /// The falcon is down (held in reset, or Hopper's OFA before FBDMA).
    Down,
    /// DMACTL's require-context bit is set.
    RequireContext,
    /// FBIF_CTL does not allow physical DMA without a context.
    PhysicalNotAllowed,
    /// The command's FBIF context is not physical system memory.
    Target,
    /// A size encoding beyond 256 bytes, or an IMEM command.
    Command,
    /// The address or the DMEM offset is not aligned to the size, or the
    /// DMEM range is beyond DMEM.
    Alignment,
    /// The IOMMU refused the access (unmapped, read-only, no bus master).
    Iommu,
}

/// The GPU's state.
#[derive(Debug, Clone)]
pub struct NvFalcon {
    chip: Chip,
    arch: Arch,
    pmc_enable: u32,
    dma_top: u32,
    /// Engine reset asserted.
    in_reset: bool,
    /// Hopper: the FSP enabled the OFA's DMA.
    fbdma: bool,
    /// Whether the falcon was up at the last look (a down-to-up change is
    /// a falcon reset).
    was_up: bool,
    dmactl: u32,
    scrub_reads: u8,
    base: u32,
    moffs: u32,
    cmd: u32,
    idle: bool,
    fboffs: u32,
    base1: u32,
    dmemc: [u32; DMEM_PORTS as usize],
    mailbox: u32,
    core_select: u32,
    transcfg: [u32; 8],
    fbif_ctl: u32,
    fbif_ctl2: u32,
    dmem: Vec<u8>,
    ememc: [u32; FSP_CHANNELS as usize],
    emem: Vec<u8>,
    queue: [(u32, u32); FSP_CHANNELS as usize],
    msg_queue: [(u32, u32); FSP_CHANNELS as usize],
    transfers: u64,
    bytes: u64,
    errors: u64,
    last_error: Option<TransferError>,
}

impl Default for NvFalcon {
    fn default() -> Self {
        NvFalcon::new(chip_by_device(DEFAULT_DEVICE).expect("the default chip is listed"))
    }
}

impl NvFalcon {
    /// The GPU `chip` at power-on.
    pub fn new(chip: Chip) -> NvFalcon {
        let arch = Arch::of(chip.boot0).expect("a listed chip has a known architecture");
        let mut m = NvFalcon {
            chip,
            arch,
            pmc_enable: arch.pmc_mask(),
            dma_top: 0,
            in_reset: false,
            fbdma: false,
            was_up: false,
            dmactl: 0,
            scrub_reads: 0,
            base: 0,
            moffs: 0,
            cmd: 0,
            idle: true,
            fboffs: 0,
            base1: 0,
            dmemc: [0; DMEM_PORTS as usize],
            mailbox: 0,
            core_select: 0,
            transcfg: [0; 8],
            fbif_ctl: 0,
            fbif_ctl2: 0,
            dmem: vec![0; DMEM_SIZE],
            ememc: [0; FSP_CHANNELS as usize],
            emem: vec![0; EMEM_SIZE],
            queue: [(0, 0); FSP_CHANNELS as usize],
            msg_queue: [(0, 0); FSP_CHANNELS as usize],
            transfers: 0,
            bytes: 0,
            errors: 0,
            last_error: None,
        };
        m.falcon_reset();
        // Out of the VBIOS's hands: scrubbing long finished.
        m.scrub_reads = 0;
        m.was_up = m.up();
        m
    }

    /// The chip presented.
    pub fn chip(&self) -> Chip {
        self.chip
    }

    /// Its architecture.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// Transfers completed since power-on.
    pub fn transfers(&self) -> u64 {
        self.transfers
    }

    /// Bytes moved by them.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Transfers that did not complete.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Why the last of them did not.
    pub fn last_error(&self) -> Option<TransferError> {
        self.last_error
    }

    /// Whether the falcon runs: its PMC bits set (up to GP100), its engine
    /// reset clear, and on Hopper the FSP's FBDMA enabled.
    pub fn up(&self) -> bool {
        let mask = self.arch.pmc_mask();
        let pmc = self.pmc_enable & mask == mask;
        match self.arch {
            Arch::Hopper => self.fbdma,
            _ => pmc && !self.in_reset,
        }
    }

    /// A falcon reset: what coming out of reset leaves.
    fn falcon_reset(&mut self) {
        self.dmactl = DMACTL_REQUIRE_CTX;
        self.scrub_reads = 1;
        self.base = 0;
        self.moffs = 0;
        self.cmd = 0;
        self.idle = true;
        self.fboffs = 0;
        self.base1 = 0;
        self.dmemc = [0; DMEM_PORTS as usize];
        self.mailbox = 0;
        self.core_select = 0;
        self.transcfg = [0; 8];
        self.fbif_ctl = 0;
        self.fbif_ctl2 = 0;
        self.dmem.fill(0);
    }

    /// After a write that may have brought the falcon up or down.
    fn track_power(&mut self) {
        let up = self.up();
        if up && !self.was_up {
            self.falcon_reset();
        }
        self.was_up = up;
    }

    fn falcon_base(&self) -> u32 {
        self.arch.falcon().0
    }

    fn fbif_base(&self) -> u32 {
        self.arch.falcon().1
    }

    fn in_falcon(&self, off: u32) -> Option<u32> {
        let b = self.falcon_base();
        (off >= b && off < b + FALCON_WINDOW).then(|| off - b)
    }

    fn is_hopper(&self) -> bool {
        self.arch == Arch::Hopper
    }

    /// The 32-bit register at `off` (4-byte aligned), without side effects.
    fn peek(&self, off: u32) -> u32 {
        if let Some(r) = self.in_falcon(off) {
            if r == falcon::ENGINE_RESET && !self.is_hopper() {
                return u32::from(self.in_reset);
            }
            if !self.up() {
                return PRI_ERROR;
            }
            return self.falcon_value(r);
        }
        match off {
            reg::PMC_BOOT_0 => self.chip.boot0,
            reg::PMC_ENABLE => self.pmc_enable,
            reg::DMA_ADDR_TOP => self.dma_top,
            reg::MEM_CLEAR if self.arch >= Arch::Turing => 1,
            reg::BOOT_COMPLETE if (Arch::Turing..=Arch::Ada).contains(&self.arch) => 0x3ff,
            reg::FSP_BOOT_COMPLETE if self.is_hopper() => 0xff,
            o if self.is_hopper() => self.fsp_value(o).unwrap_or(0),
            _ => 0,
        }
    }

    fn falcon_value(&self, r: u32) -> u32 {
        let f = self.fbif_base() - self.falcon_base();
        match r {
            falcon::DMACTL => {
                let scrub = if self.scrub_reads > 0 {
                    DMACTL_SCRUBBING
                } else {
                    0
                };
                self.dmactl | scrub
            }
            falcon::DMATRFBASE => self.base,
            falcon::DMATRFMOFFS => self.moffs,
            falcon::DMATRFCMD => (self.cmd & !(CMD_IDLE | CMD_FULL)) | (u32::from(self.idle) << 1),
            falcon::DMATRFFBOFFS => self.fboffs,
            falcon::DMATRFBASE1 => self.base1,
            r if (falcon::DMEMC..falcon::DMEMC + 8 * DMEM_PORTS).contains(&r) => {
                let p = ((r - falcon::DMEMC) / 8) as usize;
                if r % 8 == 0 {
                    self.dmemc[p]
                } else {
                    word(&self.dmem, self.dmemc[p])
                }
            }
            falcon::ENGINE_RESET => 0,
            falcon::MAILBOX_TEST => self.mailbox,
            falcon::CORE_SELECT => self.core_select,
            r if r >= f && r < f + 0x20 => self.transcfg[((r - f) / 4) as usize],
            r if r == f + fbif::CTL => self.fbif_ctl,
            r if r == f + fbif::CTL2 => self.fbif_ctl2,
            _ => 0,
        }
    }

    fn fsp_value(&self, off: u32) -> Option<u32> {
        let ports = reg::FSP_EMEMC..reg::FSP_EMEMC + 8 * FSP_CHANNELS;
        let queues = reg::FSP_QUEUE_HEAD..reg::FSP_QUEUE_HEAD + 8 * FSP_CHANNELS;
        let msgs = reg::FSP_MSG_QUEUE_HEAD..reg::FSP_MSG_QUEUE_HEAD + 8 * FSP_CHANNELS;
        let pick = |(h, t): (u32, u32), o: u32| if o % 8 == 0 { h } else { t };
        if ports.contains(&off) {
            let c = ((off - ports.start) / 8) as usize;
            return Some(if off % 8 == 0 {
                self.ememc[c]
            } else {
                word(&self.emem, self.ememc[c])
            });
        }
        if queues.contains(&off) {
            return Some(pick(self.queue[((off - queues.start) / 8) as usize], off));
        }
        if msgs.contains(&off) {
            return Some(pick(self.msg_queue[((off - msgs.start) / 8) as usize], off));
        }
        None
    }

    /// A 32-bit read at `off`, with its side effects (scrubbing shown
    /// once, auto-increment).
    fn read32(&mut self, off: u32) -> u32 {
        let v = self.peek(off);
        if let Some(r) = self.in_falcon(off) {
            if !self.up() {
                return v;
            }
            if r == falcon::DMACTL {
                self.scrub_reads = self.scrub_reads.saturating_sub(1);
            }
            if (falcon::DMEMC..falcon::DMEMC + 8 * DMEM_PORTS).contains(&r) && r % 8 == 4 {
                let p = ((r - falcon::DMEMC) / 8) as usize;
                self.dmemc[p] = advance(self.dmemc[p], MEMC_AINCR, DMEM_SIZE);
            }
            return v;
        }
        let ports = reg::FSP_EMEMC..reg::FSP_EMEMC + 8 * FSP_CHANNELS;
        if self.is_hopper() && ports.contains(&off) && off % 8 == 4 {
            let c = ((off - ports.start) / 8) as usize;
            self.ememc[c] = advance(self.ememc[c], MEMC_AINCR, EMEM_SIZE);
        }
        v
    }

    /// A 32-bit write of `v` at `off`.
    fn write32(&mut self, ctx: &mut Ctx<'_>, off: u32, v: u32) {
        if let Some(r) = self.in_falcon(off) {
            if r == falcon::ENGINE_RESET && !self.is_hopper() {
                self.in_reset = v & 1 != 0;
                self.track_power();
                return;
            }
            if self.up() {
                self.falcon_write(ctx, r, v);
            }
            return;
        }
        match off {
            reg::PMC_ENABLE => {
                self.pmc_enable = v;
                self.track_power();
            }
            reg::DMA_ADDR_TOP => self.dma_top = v & 0x1_ffff,
            o if self.is_hopper() => self.fsp_write(o, v),
            _ => {}
        }
    }

    fn falcon_write(&mut self, ctx: &mut Ctx<'_>, r: u32, v: u32) {
        let f = self.fbif_base() - self.falcon_base();
        match r {
            falcon::DMACTL => self.dmactl = v & 0x79, // bits 0 and 6:3; scrubbing RO
            falcon::DMATRFBASE => self.base = v,
            falcon::DMATRFMOFFS => self.moffs = v & 0xff_ffff,
            falcon::DMATRFCMD => self.transfer(ctx, v),
            falcon::DMATRFFBOFFS => self.fboffs = v,
            falcon::DMATRFBASE1 => self.base1 = v & 0x1ff,
            r if (falcon::DMEMC..falcon::DMEMC + 8 * DMEM_PORTS).contains(&r) => {
                let p = ((r - falcon::DMEMC) / 8) as usize;
                if r % 8 == 0 {
                    self.dmemc[p] = v & (0xff_fffc | MEMC_AINCR | MEMC_AINCW);
                } else {
                    set_word(&mut self.dmem, self.dmemc[p], v);
                    self.dmemc[p] = advance(self.dmemc[p], MEMC_AINCW, DMEM_SIZE);
                }
            }
            falcon::MAILBOX_TEST => self.mailbox = v,
            falcon::CORE_SELECT => self.core_select = v,
            r if r >= f && r < f + 0x20 => self.transcfg[((r - f) / 4) as usize] = v,
            r if r == f + fbif::CTL => self.fbif_ctl = v,
            r if r == f + fbif::CTL2 => self.fbif_ctl2 = v,
            _ => {}
        }
    }

    fn fsp_write(&mut self, off: u32, v: u32) {
        let ports = reg::FSP_EMEMC..reg::FSP_EMEMC + 8 * FSP_CHANNELS;
        let queues = reg::FSP_QUEUE_HEAD..reg::FSP_QUEUE_HEAD + 8 * FSP_CHANNELS;
        let msgs = reg::FSP_MSG_QUEUE_HEAD..reg::FSP_MSG_QUEUE_HEAD + 8 * FSP_CHANNELS;
        if ports.contains(&off) {
            let c = ((off - ports.start) / 8) as usize;
            if off % 8 == 0 {
                self.ememc[c] = v & (0xff_fffc | MEMC_AINCR | MEMC_AINCW);
            } else {
                set_word(&mut self.emem, self.ememc[c], v);
                self.ememc[c] = advance(self.ememc[c], MEMC_AINCW, EMEM_SIZE);
            }
        } else if queues.contains(&off) {
            let c = ((off - queues.start) / 8) as usize;
            if off % 8 == 0 {
                self.queue[c].0 = v;
                if self.queue[c].0 != self.queue[c].1 {
                    self.fsp_command(c);
                }
            } else {
                self.queue[c].1 = v;
            }
        } else if msgs.contains(&off) {
            let c = ((off - msgs.start) / 8) as usize;
            if off % 8 == 0 {
                self.msg_queue[c].0 = v;
            } else {
                self.msg_queue[c].1 = v;
            }
        }
    }

    /// The FSP handles the message on command queue `c` and answers on
    /// its message queue.
    fn fsp_command(&mut self, c: usize) {
        let (head, tail) = self.queue[c];
        let words: Vec<u32> = if tail >= head && tail - head < FSP_CHANNEL_SIZE {
            (head..=tail)
                .step_by(4)
                .map(|o| word(&self.emem, o))
                .collect()
        } else {
            Vec::new()
        };
        const SOM_EOM: u32 = 0xc000_0000;
        let whole = words.len() >= 2 && words[0] & SOM_EOM == SOM_EOM;
        let vendor = whole && words[1] & 0x7f == 0x7e && (words[1] >> 8) & 0xffff == 0x10de;
        let nvdm = if vendor { words[1] >> 24 } else { 0 };
        let status = if nvdm == NVDM_FBDMA && words.get(2) == Some(&1) {
            self.fbdma = true;
            self.track_power();
            0
        } else {
            1
        };
        let at = c as u32 * FSP_CHANNEL_SIZE;
        let answer = [
            SOM_EOM,
            0x7e | (0x10de << 8) | (NVDM_RESPONSE << 24),
            0,
            nvdm,
            status,
        ];
        for (i, w) in answer.iter().enumerate() {
            set_word(&mut self.emem, at + 4 * i as u32, *w);
        }
        self.queue[c].1 = head;
        self.msg_queue[c] = (at, at + 4 * (answer.len() as u32 - 1));
    }

    /// The DMA address the registers name.
    pub fn dma_address(&self) -> u64 {
        let base = (u64::from(self.dma_top) << 47)
            | (u64::from(self.base1 & 0x7f) << 40)
            | (u64::from(self.base) << 8);
        base.wrapping_add(u64::from(self.fboffs))
    }

    /// DMATRFCMD written: the transfer, at once.
    fn transfer(&mut self, ctx: &mut Ctx<'_>, cmd: u32) {
        self.cmd = cmd;
        self.idle = false;
        match self.try_transfer(ctx, cmd) {
            Ok(n) => {
                self.idle = true;
                self.transfers += 1;
                self.bytes += n;
            }
            Err(e) => {
                tracing::debug!(
                    ?e,
                    cmd,
                    addr = self.dma_address(),
                    "nv_falcon: transfer stalled"
                );
                self.errors += 1;
                self.last_error = Some(e);
            }
        }
    }

    fn try_transfer(&mut self, ctx: &mut Ctx<'_>, cmd: u32) -> Result<u64, TransferError> {
        if self.dmactl & DMACTL_REQUIRE_CTX != 0 {
            return Err(TransferError::RequireContext);
        }
        if self.fbif_ctl & FBIF_CTL_ALLOW_PHYS_NO_CTX == 0 {
            return Err(TransferError::PhysicalNotAllowed);
        }
        let tc = self.transcfg[((cmd >> 12) & 7) as usize];
        if tc & TRANSCFG_PHYSICAL == 0 || !matches!(tc & 3, 1 | 2) {
            return Err(TransferError::Target);
        }
        let enc = (cmd >> 8) & 7;
        if enc > 6 || cmd & CMD_IMEM != 0 {
            return Err(TransferError::Command);
        }
        let size = 4usize << enc;
        let addr = self.dma_address();
        let moffs = self.moffs as usize;
        if addr % size as u64 != 0 || moffs % size != 0 || moffs + size > DMEM_SIZE {
            return Err(TransferError::Alignment);
        }
        let dmem = &mut self.dmem[moffs..moffs + size];
        let done = if cmd & CMD_WRITE != 0 {
            ctx.dma_write(addr, dmem)
        } else {
            ctx.dma_read(addr, dmem)
        };
        done.map_err(|_| TransferError::Iommu)?;
        Ok(size as u64)
    }
}

/// The word of `mem` at byte offset `memc`'s bits 23:2 (wrapping).
fn word(mem: &[u8], memc: u32) -> u32 {
    let at = (memc & 0xff_fffc) as usize % mem.len();
    u32::from_le_bytes(mem[at..at + 4].try_into().expect("4 bytes"))
}

fn set_word(mem: &mut [u8], memc: u32, v: u32) {
    let at = (memc & 0xff_fffc) as usize % mem.len();
    mem[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// A port control after a data access: the offset 4 further if `bit`
/// (auto-increment) is set, wrapping in `size`.
fn advance(memc: u32, bit: u32, size: usize) -> u32 {
    if memc & bit == 0 {
        return memc;
    }
    let off = ((memc & 0xff_fffc) + 4) % size as u32;
    (memc & !0xff_fffc) | off
}

impl DeviceModel for NvFalcon {
    fn layout(&self) -> Layout {
        Layout::new(VENDOR, self.chip.device)
            .class(self.chip.class)
            .revision(self.chip.boot0 as u8)
            .intx()
            .msi(1)
            .region(
                0,
                RegionKind::Registers {
                    size: BAR0_SIZE,
                    mmap: true,
                    bits64: false,
                },
            )
    }

    fn read(&mut self, _: &mut Ctx<'_>, _: u32, offset: u64, width: Width) -> u64 {
        let off = offset as u32;
        match width {
            Width::B8 => u64::from(self.read32(off)) | (u64::from(self.read32(off + 4)) << 32),
            Width::B4 => u64::from(self.read32(off)),
            _ => {
                let v = self.read32(off & !3);
                u64::from(v >> (8 * (off & 3))) & width.mask()
            }
        }
    }

    fn write(&mut self, ctx: &mut Ctx<'_>, _: u32, offset: u64, width: Width, value: u64) {
        let off = offset as u32;
        match width {
            Width::B8 => {
                self.write32(ctx, off, value as u32);
                self.write32(ctx, off + 4, (value >> 32) as u32);
            }
            Width::B4 => self.write32(ctx, off, value as u32),
            _ => {
                let at = off & !3;
                let shift = 8 * (off & 3);
                let mask = (width.mask() as u32) << shift;
                let v = (self.peek(at) & !mask) | (((value as u32) << shift) & mask);
                self.write32(ctx, at, v);
            }
        }
    }

    fn reset(&mut self) {
        *self = NvFalcon::new(self.chip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_chip_has_an_architecture_and_a_unique_device_id() {
        for c in CHIPS {
            assert!(Arch::of(c.boot0).is_some(), "{}", c.name);
            assert_eq!(CHIPS.iter().filter(|d| d.device == c.device).count(), 1);
        }
        assert_eq!(Arch::of(0x1300_00a1), Some(Arch::Pascal));
        assert_eq!(Arch::of(0x1340_00a1), Some(Arch::Pascal10x));
        assert_eq!(Arch::of(0xb770_00a1), Some(Arch::Ampere));
        assert_eq!(Arch::of(0x1500_00a1), None);
    }

    #[test]
    fn the_dma_address_joins_the_top_bits_base1_base_and_fb_offset() {
        let mut m = NvFalcon::default();
        let a: u64 = 0x8123_4567_89ab_cd40;
        m.dma_top = ((a >> 47) & 0x1_ffff) as u32;
        m.base1 = ((a >> 40) & 0x7f) as u32;
        m.base = (a >> 8) as u32;
        m.fboffs = (a & 0xff) as u32;
        assert_eq!(m.dma_address(), a);
    }

    #[test]
    fn port_auto_increment_wraps_inside_the_memory() {
        let c = MEMC_AINCR | (DMEM_SIZE as u32 - 4);
        assert_eq!(advance(c, MEMC_AINCR, DMEM_SIZE), MEMC_AINCR);
        assert_eq!(advance(8, MEMC_AINCR, DMEM_SIZE), 8);
    }
}
