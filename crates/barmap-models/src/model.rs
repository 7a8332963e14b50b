//! The device-model API: what a model describes ([`Layout`]), the
//! callbacks it implements ([`DeviceModel`]), and what it can do to the
//! outside world while one runs ([`Ctx`]: interrupts, DMA, deferred work).

use barmap::{Interrupts, RegionSpec};

use crate::host::{DmaSide, IommuFault, IrqIndex};

/// The width of one register access, in bytes: 1, 2, 4 or 8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Width {
    /// One byte.
    B1 = 1,
    /// Two bytes.
    B2 = 2,
    /// Four bytes.
    B4 = 4,
    /// Eight bytes.
    B8 = 8,
}

impl Width {
    /// The width of `bytes` bytes, if it is 1, 2, 4 or 8.
    pub fn from_bytes(bytes: usize) -> Option<Width> {
        match bytes {
            1 => Some(Width::B1),
            2 => Some(Width::B2),
            4 => Some(Width::B4),
            8 => Some(Width::B8),
            _ => None,
        }
    }

    /// Bytes.
    pub fn bytes(self) -> usize {
        self as usize
    }

    /// The bits of a value of this width (`0xff` for [`Width::B1`]).
    pub fn mask(self) -> u64 {
        match self {
            Width::B8 => u64::MAX,
            w => (1u64 << (8 * w.bytes())) - 1,
        }
    }
}

/// What a BAR is to the model.
#[derive(Debug, Clone)]
pub enum RegionKind {
    /// Plain memory: barmap's memfd BAR and fault path, unchanged (reads
    /// return what was last written; the model is never called).
    Memory(RegionSpec),
    /// Registers: every access, through `pread`/`pwrite` or through an
    /// mmap of the BAR, is one call of [`DeviceModel::read`] or
    /// [`DeviceModel::write`].
    Registers {
        /// Size in bytes (a power of two, at least 16).
        size: u64,
        /// Whether the BAR may be mmapped (its accesses are then trapped
        /// and emulated, see the crate's documentation).
        mmap: bool,
        /// A 64-bit BAR (takes the next BAR register too).
        bits64: bool,
    },
}

/// A device model's PCI identity, BARs and interrupts.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class code (24 bits).
    pub class: u32,
    /// Revision ID.
    pub revision: u8,
    /// Whether the function has an INTx pin (INTA).
    pub intx: bool,
    /// The BARs, by index.
    pub regions: Vec<(u32, RegionKind)>,
    /// MSI and MSI-X capabilities. An MSI-X table and PBA placed in a
    /// register BAR are emulated by barmap (masking, pending bits): the
    /// model never sees accesses to them.
    pub interrupts: Interrupts,
    /// Config space size: 256 bytes, or 4096 for a PCI Express function
    /// whose extended config space (from 0x100) is the model's
    /// ([`DeviceModel::config_read`], [`DeviceModel::config_write`]).
    pub config_size: u64,
}

impl Layout {
    /// A function with these IDs, class 0xff0000 ("other"), revision 0,
    /// no BARs and no interrupts.
    pub fn new(vendor: u16, device: u16) -> Layout {
        Layout {
            vendor,
            device,
            class: 0x00ff_0000,
            revision: 0,
            intx: false,
            regions: Vec::new(),
            interrupts: Interrupts::default(),
            config_size: 256,
        }
    }

    /// A 4096-byte config space: accesses from 0x100 on reach
    /// [`DeviceModel::config_read`] and [`DeviceModel::config_write`].
    pub fn extended_config(mut self) -> Layout {
        self.config_size = 4096;
        self
    }

    /// Sets the class code.
    pub fn class(mut self, class: u32) -> Layout {
        self.class = class;
        self
    }

    /// Sets the revision ID.
    pub fn revision(mut self, revision: u8) -> Layout {
        self.revision = revision;
        self
    }

    /// Gives the function an INTx pin.
    pub fn intx(mut self) -> Layout {
        self.intx = true;
        self
    }

    /// BAR `index`: `size` bytes of mmappable 32-bit registers.
    pub fn registers(self, index: u32, size: u64) -> Layout {
        self.region(
            index,
            RegionKind::Registers {
                size,
                mmap: true,
                bits64: false,
            },
        )
    }

    /// BAR `index` of kind `kind`.
    pub fn region(mut self, index: u32, kind: RegionKind) -> Layout {
        self.regions.retain(|(i, _)| *i != index);
        self.regions.push((index, kind));
        self
    }

    /// An MSI capability with `vectors` vectors (a power of two up to 32).
    pub fn msi(mut self, vectors: u16) -> Layout {
        self.interrupts.msi_vectors = vectors;
        self
    }

    /// An MSI-X capability with `vectors` vectors, its table at `table`
    /// and PBA at `pba` in BAR `bar` (a register BAR: barmap emulates both).
    pub fn msix(mut self, vectors: u16, bar: u8, table: u32, pba: u32) -> Layout {
        self.interrupts.msix_vectors = vectors;
        self.interrupts.msix_bar = bar;
        self.interrupts.msix_table = table;
        self.interrupts.msix_pba = pba;
        self
    }

    /// The kind of BAR `index`, if the layout has it.
    pub fn kind(&self, index: u32) -> Option<&RegionKind> {
        self.regions
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, k)| k)
    }
}

/// A device model: the behaviour behind a function's register BARs.
///
/// barmap calls the model with its state locked (one call at a time, so
/// `&mut self`), from whichever thread made the access: a thread of the
/// program whose load or store was trapped, a `pread`/`pwrite`, or the
/// model's own worker ([`DeviceModel::work`]). Register accesses reach the
/// model only while device memory is accessible (COMMAND.MEM set, full
/// power, the device alive); during a reset they wait.
///
/// A callback must not touch a mapping of its own device, and should not
/// block for long: the thread that made the access waits for it. It may
/// run inside a signal handler (a trapped access): it takes no lock that
/// the program may hold (the program's own locks, stdio's), which in
/// practice means only the model's state, [`Ctx`], and allocation.
pub trait DeviceModel: Send + 'static {
    /// The function's identity, BARs and interrupts (asked once, when the
    /// device is built).
    fn layout(&self) -> Layout;

    /// A read of `width` bytes at `offset` of register BAR `region`
    /// (`offset` is a multiple of the width). The value's upper bits beyond
    /// the width are ignored.
    fn read(&mut self, ctx: &mut Ctx<'_>, region: u32, offset: u64, width: Width) -> u64;

    /// A write of `value` (`width` bytes) at `offset` of register BAR
    /// `region` (`offset` is a multiple of the width).
    fn write(&mut self, ctx: &mut Ctx<'_>, region: u32, offset: u64, width: Width, value: u64);

    /// Back to the power-on state (a function-level reset or
    /// `VFIO_DEVICE_RESET`). Called with the memory gate held, so no
    /// access runs meanwhile.
    fn reset(&mut self);

    /// A read of `width` bytes at `offset` of extended config space
    /// (0x100 and up, with [`Layout::extended_config`]; `offset` is a
    /// multiple of the width). The default reads zero.
    fn config_read(&mut self, ctx: &mut Ctx<'_>, offset: u64, width: Width) -> u64 {
        let _ = (ctx, offset, width);
        0
    }

    /// A write of `value` at `offset` of extended config space. The
    /// default ignores it.
    fn config_write(&mut self, ctx: &mut Ctx<'_>, offset: u64, width: Width, value: u64) {
        let _ = (ctx, offset, width, value);
    }

    /// A 64-byte store to `offset` of register BAR `region` (64-byte
    /// aligned), made atomically by one instruction, `how`: MOVDIR64B (a
    /// posted write: the return value is ignored), ENQCMD or ENQCMDS (a
    /// non-posted request: return whether the device accepted it; the
    /// program sees ZF clear if it did, set for "retry"). The instruction
    /// is emulated by the trap, whether the CPU has it (the store to the
    /// inaccessible page faults) or not (it raises SIGILL before touching
    /// memory). The default drops the data and refuses (ENQCMD and ENQCMDS
    /// report "retry"): a register BAR that does not expect 64-byte stores
    /// takes none of its registers from one.
    fn write64(
        &mut self,
        ctx: &mut Ctx<'_>,
        region: u32,
        offset: u64,
        data: &[u8; 64],
        how: Store64,
    ) -> bool {
        let _ = (ctx, region, offset, data, how);
        false
    }

    /// Deferred work, after [`Ctx::kick`]: runs on the device's worker
    /// thread, with the model's state locked like any callback. The
    /// default does nothing.
    fn work(&mut self, ctx: &mut Ctx<'_>) {
        let _ = ctx;
    }
}

/// The instruction that made a 64-byte store ([`DeviceModel::write64`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store64 {
    /// MOVDIR64B: a posted 64-byte direct store; nothing comes back.
    Movdir64b,
    /// ENQCMD: a user-mode enqueue command. The CPU replaces the first
    /// four bytes with the process's PASID (bits 19:0) and a clear
    /// privilege bit (31); barmap gives the process no PASID, so they
    /// arrive as zero.
    Enqcmd,
    /// ENQCMDS: the supervisor form, whose PASID and privilege bit come
    /// from the source as the program wrote them.
    Enqcmds,
}

/// Which interrupt mechanism the program enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqMode {
    /// MSI-X vectors.
    Msix,
    /// MSI.
    Msi,
    /// The INTx pin.
    Intx,
    /// None.
    None,
}

/// What a model can do while one of its callbacks runs: raise interrupts,
/// DMA by IOVA through the IOMMU table its device is attached to, and ask
/// for deferred work.
pub struct Ctx<'a> {
    pub(crate) dev: &'a crate::device::Shared,
    pub(crate) kicked: bool,
}

impl std::fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").field("kicked", &self.kicked).finish()
    }
}

impl Ctx<'_> {
    /// The interrupt mechanism the program enabled: MSI-X if it enabled
    /// MSI-X vectors, else MSI, else INTx if it gave INTx an eventfd.
    pub fn irq_mode(&self) -> IrqMode {
        self.dev.irq_mode()
    }

    /// Raises interrupt `vector` by the mechanism the program enabled
    /// ([`Ctx::irq_mode`]): an MSI-X vector that is masked (in its vector
    /// control word or by the function mask) gets its pending bit set
    /// instead and fires when unmasked; an MSI vector beyond those enabled
    /// is dropped; with INTx, the pin is asserted (vector ignored) until
    /// [`Ctx::set_intx`] lowers it. Returns whether an interrupt was
    /// signalled now.
    pub fn raise(&mut self, vector: u32) -> bool {
        match self.irq_mode() {
            IrqMode::Msix => self.dev.msix_raise(vector),
            IrqMode::Msi => self.dev.host().signal(IrqIndex::Msi, vector),
            IrqMode::Intx => {
                self.set_intx(true);
                true
            }
            IrqMode::None => false,
        }
    }

    /// Raises MSI-X `vector` (with masking and pending bits), whatever the
    /// mode; returns whether it was signalled now.
    pub fn raise_msix(&mut self, vector: u32) -> bool {
        self.dev.msix_raise(vector)
    }

    /// Sets the INTx pin's level (level-triggered, as PCI INTx is: while
    /// it is asserted, the program's unmask fires it again). Ignored while
    /// COMMAND's INTx-disable bit is set.
    pub fn set_intx(&mut self, level: bool) {
        let disabled = self.dev.device.command() & (1 << 10) != 0;
        self.dev.host().set_intx(level && !disabled);
    }

    /// Whether COMMAND's bus-master bit is set (without it, DMA fails
    /// with [`IommuFault::BusMasterDisabled`]).
    pub fn bus_master(&self) -> bool {
        self.dev.device.command() & barmap::device::pci::COMMAND_MASTER != 0
    }

    /// Reads `buf.len()` bytes of the program's memory at `iova`, through
    /// the IOMMU table the device is attached to. An unmapped IOVA, one
    /// without read permission, or bus mastering off is an error, and
    /// nothing is read; the program is never harmed.
    pub fn dma_read(&mut self, iova: u64, buf: &mut [u8]) -> Result<(), IommuFault> {
        if !self.bus_master() {
            return Err(IommuFault::BusMasterDisabled);
        }
        self.dev.host().dma_read(iova, buf)
    }

    /// Writes `data` to the program's memory at `iova` (see
    /// [`Ctx::dma_read`]; a read-only mapping is a permission fault).
    pub fn dma_write(&mut self, iova: u64, data: &[u8]) -> Result<(), IommuFault> {
        if !self.bus_master() {
            return Err(IommuFault::BusMasterDisabled);
        }
        self.dev.host().dma_write(iova, data)
    }

    /// Copies `len` bytes of the program's memory from `src` to `dst`, both
    /// by IOVA (a memory-to-memory DMA engine's transfer): `src` needs read
    /// permission, `dst` write permission. On a fault, the side the IOMMU
    /// refused is returned with it; bytes before the fault may have been
    /// copied, as on hardware.
    pub fn dma_copy(&mut self, src: u64, dst: u64, len: u64) -> Result<(), (DmaSide, IommuFault)> {
        if !self.bus_master() {
            return Err((DmaSide::Read, IommuFault::BusMasterDisabled));
        }
        self.dev.host().dma_copy(src, dst, len)
    }

    /// Asks for [`DeviceModel::work`] to run soon on the device's worker
    /// thread (after this callback returns). Kicks before the work runs
    /// are merged into one run.
    pub fn kick(&mut self) {
        self.kicked = true;
    }

    /// A handle that asks for [`DeviceModel::work`] from outside any
    /// callback: for a model whose work arrives from elsewhere (a frame
    /// from another device over a wire).
    pub fn waker(&self) -> crate::device::Waker {
        self.dev.waker()
    }
}
