//! An Intel Data Streaming Accelerator (DSA), as Sapphire Rapids presents
//! it (8086:0b25; option: Granite Rapids-D's 0x11fb or Diamond Rapids'
//! 0x1212, the other ids the kernel's VFIO selftest driver accepts): the
//! registers, work queues, portals and descriptors that the selftests'
//! `lib/drivers/dsa/dsa.c` uses, modelled after the layout of Linux's
//! `drivers/dma/idxd/registers.h` and `include/uapi/linux/idxd.h`.
//!
//! BAR0 (64 KiB, 64-bit) holds the registers, BAR2 (128 KiB, 64-bit) the
//! work-queue portals: four 4 KiB pages per work queue (unlimited and
//! limited MSI-X portals, then the two IMS ones; all four submit alike
//! here). A descriptor is submitted by one 64-byte store to a portal
//! ([`DeviceModel::write64`]): MOVDIR64B to a dedicated work queue, ENQCMD
//! or ENQCMDS to a shared one (accepted while the queue has room, "retry"
//! otherwise). Narrower stores to a portal are ignored and its reads
//! return 0.
//!
//! | offset | width | access | register |
//! |---|---|---|---|
//! | 0x00 | 4 | RO | VERSION: 0x100 |
//! | 0x10 | 8 | RO | GENCAP: no block on fault, no command capability register, max transfer 2^`xfer` bytes (option, default 16), max batch 2^10, configurable |
//! | 0x20 | 8 | RO | WQCAP: 128 entries in all, 8 work queues, 64-byte WQCFG, shared and dedicated modes, priority, operation configuration |
//! | 0x30 | 8 | RO | GRPCAP: 4 groups |
//! | 0x38 | 8 | RO | ENGCAP: 4 engines |
//! | 0x40 | 32 | RO | OPCAP: no-op, batch, drain, memmove |
//! | 0x60 | 16 | RO | table offsets (units of 0x100): GRPCFG 0x400, WQCFG 0x800, MSI-X permissions 0x1000, no IMS, no perfmon |
//! | 0x80 | 4 | RW | GENCFG |
//! | 0x88 | 4 | RW | GENCTRL: bit 0 interrupt on software error, bit 1 on halt |
//! | 0x90 | 4 | RO | GENSTS: 0 disabled, 1 enabled |
//! | 0x98 | 4 | RW1C | INTCAUSE: 0x1 software error, 0x2 command completed |
//! | 0xa0 | 4 | RW | CMD: operand (19:0), command (24:20), interrupt on completion (31) |
//! | 0xa8 | 4 | RO | CMDSTS: error (7:0), result (23:8); never active, every command completes at once |
//! | 0xb0 | 4 | RO | CMDCAP: 0 |
//! | 0xc0 | 32 | RW1C | SWERR: valid and overflow (bits 1:0 of the first qword, write 1 to clear), then as `union sw_err_reg` |
//! | 0x400 | 64 × 4 | RW | GRPCFG: work queues (4 qwords), engines, flags, per group |
//! | 0x800 | 64 × 8 | RW | WQCFG, per work queue (as `union wqcfg`; occupancy and state read-only) |
//! | 0x1000 | 8 × 9 | RW | MSI-X permission table |
//! | 0x2000 | | | MSI-X table: 9 vectors (0 for errors and commands, 1-8 for completions) |
//! | 0x3000 | | | MSI-X PBA |
//!
//! Commands: enable and disable the device (enabling checks bus mastering,
//! the groups, and that the work queues fit WQCAP's total), drain or abort
//! all, reset the device (configuration back to its power-on values, the
//! queues emptied, SWERR cleared), enable a work queue (operand: its index;
//! checks its size, priority, mode, limits and group) and disable, drain,
//! abort or reset work queues (operand: a bitmap of 16 queues, bits 19:16
//! its block), with the error codes of `enum idxd_cmdsts_err`.
//!
//! Descriptors (64 bytes, `struct dsa_hw_desc`) run in submission order on
//! the device's worker thread: no-op, drain, memmove (sizes 1 to the work
//! queue's maximum, source and destination not overlapping) and batch (2
//! to the work queue's maximum of descriptors, read from a 64-byte aligned
//! list by DMA; no batch inside a batch). Flags: fence, completion record
//! address valid, request completion record, request completion interrupt
//! and cache control (a hint); any other is an invalid flag. A completion
//! record (32 bytes, 32-byte aligned) is written by DMA through the IOMMU
//! tables when asked for, and after any error even if not; its status byte
//! last. A page fault (an unmapped or read-only IOVA) ends a memmove
//! partially completed: status 0x03 (0x83 when writing), the bytes
//! completed before the first page that faulted, and its address. A batch
//! whose descriptors did not all succeed completes with status 0x05 and the
//! number of descriptors that did. An error that no completion record can
//! report (no record address, a misaligned or faulting one, a descriptor to
//! a disabled or full queue) sets SWERR and INTCAUSE and raises vector 0 if
//! GENCTRL asks; the selftest driver reads SWERR while it waits and fails
//! the test on one, as on hardware. A completion interrupt (RCI) raises
//! MSI-X vector `int_handle`.
//!
//! Left out: shared virtual memory (PASIDs, ATS, page requests; a
//! descriptor's PASID and privilege fields are ignored, block on fault is
//! not offered), event logs, IMS and interrupt handles (so CMDCAP's request
//! is not needed), every operation but the four above (fill, compare,
//! CRC, DIF, delta records, cache flush, ...), read buffers and traffic
//! classes, occupancy interrupts, performance monitoring, the halt state.
//! A driver that needs one of these meets an unsupported operation or flag
//! in its completion record, or a zero capability.

use std::collections::VecDeque;

use crate::host::DmaSide;
use crate::model::{Ctx, DeviceModel, Layout, RegionKind, Store64, Width};

/// Intel's vendor ID.
pub const VENDOR: u16 = 0x8086;
/// PCI_DEVICE_ID_INTEL_DSA_SPR0 (the default).
pub const DEVICE_SPR0: u16 = 0x0b25;
/// PCI_DEVICE_ID_INTEL_DSA_GNRD.
pub const DEVICE_GNRD: u16 = 0x11fb;
/// PCI_DEVICE_ID_INTEL_DSA_DMR.
pub const DEVICE_DMR: u16 = 0x1212;
/// The device ids the model presents (those the selftest driver accepts).
pub const DEVICES: [u16; 3] = [DEVICE_SPR0, DEVICE_GNRD, DEVICE_DMR];
/// The default log2 of the largest transfer: 64 KiB (hardware offers 2^31;
/// the selftests' storm copies 250 GiB or 32 Ki transfers of this size).
pub const DEFAULT_XFER_SHIFT: u8 = 16;
/// log2 of the largest batch.
pub const MAX_BATCH_SHIFT: u8 = 10;
/// Work queues.
pub const NUM_WQS: usize = 8;
/// Entries of all work queues together.
pub const TOTAL_WQ_SIZE: u16 = 128;
/// Groups.
pub const NUM_GROUPS: usize = 4;
/// Engines.
pub const NUM_ENGINES: u64 = 4;
/// MSI-X vectors.
pub const MSIX_VECTORS: u16 = 9;
/// BAR0's size.
pub const BAR0_SIZE: u64 = 64 << 10;
/// BAR2's size: four portal pages per work queue.
pub const BAR2_SIZE: u64 = (NUM_WQS as u64) * 4 * PORTAL_SIZE;
/// One portal page.
pub const PORTAL_SIZE: u64 = 4096;
/// The group configuration table.
pub const GRPCFG: u64 = 0x400;
/// The work-queue configuration table.
pub const WQCFG: u64 = 0x800;
/// The MSI-X permission table.
pub const MSIX_PERM: u64 = 0x1000;
/// The MSI-X table.
pub const MSIX_TABLE: u32 = 0x2000;
/// The MSI-X PBA.
pub const MSIX_PBA: u32 = 0x3000;

/// BAR0 register offsets.
pub mod reg {
    /// Version (32 bits).
    pub const VERSION: u64 = 0x00;
    /// General capabilities.
    pub const GENCAP: u64 = 0x10;
    /// Work-queue capabilities.
    pub const WQCAP: u64 = 0x20;
    /// Group capabilities.
    pub const GRPCAP: u64 = 0x30;
    /// Engine capabilities.
    pub const ENGCAP: u64 = 0x38;
    /// Operation capabilities (256 bits).
    pub const OPCAP: u64 = 0x40;
    /// Table offsets (128 bits).
    pub const TABLE_OFFSET: u64 = 0x60;
    /// General configuration (32 bits).
    pub const GENCFG: u64 = 0x80;
    /// General control (32 bits).
    pub const GENCTRL: u64 = 0x88;
    /// General status (32 bits).
    pub const GENSTS: u64 = 0x90;
    /// Interrupt cause (32 bits, write 1 to clear).
    pub const INTCAUSE: u64 = 0x98;
    /// Command (32 bits).
    pub const CMD: u64 = 0xa0;
    /// Command status (32 bits).
    pub const CMDSTS: u64 = 0xa8;
    /// Command capabilities (32 bits).
    pub const CMDCAP: u64 = 0xb0;
    /// Software error (256 bits).
    pub const SWERR: u64 = 0xc0;
}

/// Commands (CMD bits 24:20).
pub mod cmd {
    /// Enable the device.
    pub const ENABLE_DEVICE: u32 = 1;
    /// Disable the device.
    pub const DISABLE_DEVICE: u32 = 2;
    /// Drain every queue.
    pub const DRAIN_ALL: u32 = 3;
    /// Abort every queue.
    pub const ABORT_ALL: u32 = 4;
    /// Reset the device.
    pub const RESET_DEVICE: u32 = 5;
    /// Enable a work queue (operand: its index).
    pub const ENABLE_WQ: u32 = 6;
    /// Disable work queues (operand: a bitmap).
    pub const DISABLE_WQ: u32 = 7;
    /// Drain work queues.
    pub const DRAIN_WQ: u32 = 8;
    /// Abort work queues.
    pub const ABORT_WQ: u32 = 9;
    /// Reset work queues.
    pub const RESET_WQ: u32 = 10;
}

/// Command status error codes (CMDSTS bits 7:0).
pub mod cmdsts {
    /// An unknown command.
    pub const INVAL_CMD: u32 = 0x01;
    /// A work-queue index out of range.
    pub const INVAL_WQIDX: u32 = 0x02;
    /// Enable device: already enabled.
    pub const DEV_ENABLED: u32 = 0x10;
    /// Enable device: bus mastering is off.
    pub const BUSMASTER_EN: u32 = 0x12;
    /// Enable device: the work queues' sizes exceed the total.
    pub const WQ_SIZE_ERANGE: u32 = 0x14;
    /// Enable device: a group has work queues but no engine.
    pub const GRP_CONFIG: u32 = 0x15;
    /// Enable work queue: the device is not enabled.
    pub const DEV_NOTEN: u32 = 0x20;
    /// Enable work queue: already enabled.
    pub const WQ_ENABLED: u32 = 0x21;
    /// Enable work queue: size 0, or in no group.
    pub const WQ_SIZE: u32 = 0x22;
    /// Enable work queue: priority 0.
    pub const WQ_PRIOR: u32 = 0x23;
    /// Enable work queue: block on fault asked for (not offered).
    pub const BOF_EN: u32 = 0x25;
    /// Enable work queue: a maximum batch beyond GENCAP's.
    pub const MAX_BATCH_SIZE: u32 = 0x27;
    /// Enable work queue: a maximum transfer beyond GENCAP's.
    pub const MAX_XFER_SIZE: u32 = 0x28;
    /// Disable device: not enabled.
    pub const DIS_DEV_EN: u32 = 0x31;
    /// A work-queue command while the device is disabled.
    pub const DEV_NOT_EN: u32 = 0x32;
}

/// Descriptor operations.
pub mod op {
    /// No operation (completes).
    pub const NOOP: u8 = 0;
    /// A batch of descriptors read from memory.
    pub const BATCH: u8 = 1;
    /// Drain (completes after earlier descriptors, as all do here).
    pub const DRAIN: u8 = 2;
    /// Copy.
    pub const MEMMOVE: u8 = 3;
}

/// Descriptor flags.
pub mod flag {
    /// Fence.
    pub const FENCE: u32 = 0x0001;
    /// Block on fault (not offered).
    pub const BOF: u32 = 0x0002;
    /// Completion record address valid.
    pub const CRAV: u32 = 0x0004;
    /// Request completion record.
    pub const RCR: u32 = 0x0008;
    /// Request completion interrupt.
    pub const RCI: u32 = 0x0010;
    /// Cache control (a hint).
    pub const CC: u32 = 0x0100;
}

/// Completion statuses (`enum dsa_completion_status`).
pub mod status {
    /// Success.
    pub const SUCCESS: u8 = 0x01;
    /// A page fault, no block on fault: partially completed.
    pub const PAGE_FAULT_NOBOF: u8 = 0x03;
    /// A batch with a descriptor that did not succeed.
    pub const BATCH_FAIL: u8 = 0x05;
    /// A page fault reading a batch's descriptor list.
    pub const BATCH_PAGE_FAULT: u8 = 0x06;
    /// An unsupported operation.
    pub const BAD_OPCODE: u8 = 0x10;
    /// Invalid flags.
    pub const INVALID_FLAGS: u8 = 0x11;
    /// A transfer size of 0 or beyond the work queue's maximum.
    pub const XFER_ERANGE: u8 = 0x13;
    /// A batch count below 2 or beyond the work queue's maximum.
    pub const DESC_CNT_ERANGE: u8 = 0x14;
    /// Overlapping source and destination.
    pub const OVERLAP_BUFFERS: u8 = 0x16;
    /// A misaligned descriptor list.
    pub const DESCLIST_ALIGN: u8 = 0x18;
    /// An interrupt handle beyond the MSI-X vectors.
    pub const INT_HANDLE_INVAL: u8 = 0x19;
    /// The completion record address faulted.
    pub const CRA_XLAT: u8 = 0x1a;
    /// The completion record address is not 32-byte aligned.
    pub const CRA_ALIGN: u8 = 0x1b;
    /// Status bit 7: the page fault was a write.
    pub const WRITE: u8 = 0x80;
}

/// SWERR codes for submissions no descriptor reports (the model's own,
/// above the completion statuses).
pub mod swerr {
    /// A descriptor to a disabled work queue (dropped).
    pub const WQ_DISABLED: u8 = 0x30;
    /// A descriptor to a full work queue by MOVDIR64B (dropped).
    pub const WQ_FULL: u8 = 0x31;
    /// MOVDIR64B to a shared queue or ENQCMD to a dedicated one.
    pub const WQ_MODE: u8 = 0x32;
}

/// GENCTRL: interrupt on a software error.
const GENCTRL_SOFTERR_INT: u32 = 0x1;
/// INTCAUSE: software error.
const INTC_ERR: u32 = 0x1;
/// INTCAUSE: command completed.
const INTC_CMD: u32 = 0x2;
/// SWERR bits 1:0 (valid, overflow).
const SWERR_ACK: u64 = 0x3;
/// Flags the model honours.
const KNOWN_FLAGS: u32 = flag::FENCE | flag::CRAV | flag::RCR | flag::RCI | flag::CC;
/// Bytes moved per run of the worker before register accesses get in.
const BUDGET: u64 = 32 << 20;
/// Bytes per completion record.
const RECORD: usize = 32;

/// One descriptor (`struct dsa_hw_desc`, the fields the model reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Descriptor {
    /// The flags (24 bits).
    pub flags: u32,
    /// The operation.
    pub opcode: u8,
    /// The completion record's IOVA.
    pub completion: u64,
    /// Source (or, for a batch, the descriptor list) IOVA.
    pub src: u64,
    /// Destination IOVA.
    pub dst: u64,
    /// Transfer size (or, for a batch, the descriptor count).
    pub size: u32,
    /// The MSI-X vector of a completion interrupt.
    pub int_handle: u16,
}

impl Descriptor {
    /// The descriptor in `b`.
    pub fn from_bytes(b: &[u8; 64]) -> Descriptor {
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let word = u32_at(4);
        Descriptor {
            flags: word & 0x00ff_ffff,
            opcode: (word >> 24) as u8,
            completion: u64_at(8),
            src: u64_at(16),
            dst: u64_at(24),
            size: u32_at(32),
            int_handle: u16::from_le_bytes([b[36], b[37]]),
        }
    }

    /// The descriptor's 64 bytes (PASID, privilege and reserved fields 0).
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        let word = (self.flags & 0x00ff_ffff) | u32::from(self.opcode) << 24;
        b[4..8].copy_from_slice(&word.to_le_bytes());
        b[8..16].copy_from_slice(&self.completion.to_le_bytes());
        b[16..24].copy_from_slice(&self.src.to_le_bytes());
        b[24..32].copy_from_slice(&self.dst.to_le_bytes());
        b[32..36].copy_from_slice(&self.size.to_le_bytes());
        b[36..38].copy_from_slice(&self.int_handle.to_le_bytes());
        b
    }
}

/// A completion record's contents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Record {
    status: u8,
    bytes: u32,
    fault_addr: u64,
    invalid_flags: u32,
}

impl Record {
    fn ok() -> Record {
        Record {
            status: status::SUCCESS,
            ..Record::default()
        }
    }

    fn error(status: u8) -> Record {
        Record {
            status,
            ..Record::default()
        }
    }

    fn succeeded(&self) -> bool {
        self.status == status::SUCCESS
    }

    fn to_bytes(self) -> [u8; RECORD] {
        let mut b = [0u8; RECORD];
        b[0] = self.status;
        b[4..8].copy_from_slice(&self.bytes.to_le_bytes());
        b[8..16].copy_from_slice(&self.fault_addr.to_le_bytes());
        b[16..20].copy_from_slice(&(self.invalid_flags & 0x00ff_ffff).to_le_bytes());
        b
    }
}

/// One work queue: its configuration dwords, state and queued descriptors.
#[derive(Debug, Clone, Default)]
struct Wq {
    cfg: [u32; 16],
    enabled: bool,
    queue: VecDeque<[u8; 64]>,
}

impl Wq {
    fn size(&self) -> usize {
        (self.cfg[0] & 0xffff) as usize
    }
    fn dedicated(&self) -> bool {
        self.cfg[2] & 1 != 0
    }
    fn bof(&self) -> bool {
        self.cfg[2] & 2 != 0
    }
    fn priority(&self) -> u32 {
        (self.cfg[2] >> 4) & 0xf
    }
    fn max_xfer_shift(&self) -> u32 {
        self.cfg[3] & 0x1f
    }
    fn max_batch_shift(&self) -> u32 {
        (self.cfg[3] >> 5) & 0xf
    }
}

/// The DSA device's state.
#[derive(Debug, Clone)]
pub struct Dsa {
    device: u16,
    xfer_shift: u8,
    enabled: bool,
    gencfg: u32,
    genctrl: u32,
    intcause: u32,
    cmd: u32,
    cmdsts: u32,
    swerr: [u64; 4],
    grpcfg: [[u64; 8]; NUM_GROUPS],
    wqs: Vec<Wq>,
    msix_perm: [u32; MSIX_VECTORS as usize],
    /// Round robin over the work queues.
    next_wq: usize,
    copied: u64,
    descriptors: u64,
}

impl Default for Dsa {
    fn default() -> Self {
        Dsa::new(DEVICE_SPR0, DEFAULT_XFER_SHIFT)
    }
}

impl Dsa {
    /// A DSA with device id `device` (one of [`DEVICES`]) whose transfers
    /// may be up to `2^xfer_shift` bytes (12..=31).
    pub fn new(device: u16, xfer_shift: u8) -> Dsa {
        Dsa {
            device,
            xfer_shift,
            enabled: false,
            gencfg: 0,
            genctrl: 0,
            intcause: 0,
            cmd: 0,
            cmdsts: 0,
            swerr: [0; 4],
            grpcfg: [[0; 8]; NUM_GROUPS],
            wqs: vec![Wq::default(); NUM_WQS],
            msix_perm: [0; MSIX_VECTORS as usize],
            next_wq: 0,
            copied: 0,
            descriptors: 0,
        }
    }

    /// Bytes copied since the last reset.
    pub fn copied(&self) -> u64 {
        self.copied
    }

    /// Descriptors completed since the last reset (a batch's count too).
    pub fn descriptors(&self) -> u64 {
        self.descriptors
    }

    fn gencap(&self) -> u64 {
        let config_en = 1u64 << 31;
        u64::from(self.xfer_shift) << 16 | u64::from(MAX_BATCH_SHIFT) << 21 | config_en
    }

    fn wqcap(&self) -> u64 {
        let wqcfg_size = 1u64; // 2^(1 + 5) = 64 bytes
        let (shared, dedicated, priority, op_config) = (1u64 << 48, 1 << 49, 1 << 51, 1 << 54);
        u64::from(TOTAL_WQ_SIZE)
            | (NUM_WQS as u64) << 16
            | wqcfg_size << 24
            | shared
            | dedicated
            | priority
            | op_config
    }

    fn opcap(&self) -> u64 {
        [op::NOOP, op::BATCH, op::DRAIN, op::MEMMOVE]
            .iter()
            .fold(0, |m, o| m | 1 << o)
    }

    /// The 8 bytes of BAR0 at `qword` (8-byte aligned).
    fn qword(&self, qword: u64) -> u64 {
        let pair = |lo: u32, hi: u32| u64::from(lo) | u64::from(hi) << 32;
        match qword {
            reg::VERSION => 0x100,
            reg::GENCAP => self.gencap(),
            reg::WQCAP => self.wqcap(),
            reg::GRPCAP => NUM_GROUPS as u64,
            reg::ENGCAP => NUM_ENGINES,
            reg::OPCAP => self.opcap(),
            reg::TABLE_OFFSET => {
                (GRPCFG / 0x100) | ((WQCFG / 0x100) << 16) | ((MSIX_PERM / 0x100) << 32)
            }
            reg::GENCFG => u64::from(self.gencfg),
            reg::GENCTRL => u64::from(self.genctrl),
            reg::GENSTS => u64::from(self.enabled),
            reg::INTCAUSE => u64::from(self.intcause),
            reg::CMD => u64::from(self.cmd),
            reg::CMDSTS => u64::from(self.cmdsts),
            q if (reg::SWERR..reg::SWERR + 32).contains(&q) => {
                self.swerr[((q - reg::SWERR) / 8) as usize]
            }
            q if (GRPCFG..GRPCFG + 64 * NUM_GROUPS as u64).contains(&q) => {
                let i = (q - GRPCFG) as usize;
                self.grpcfg[i / 64][(i % 64) / 8]
            }
            q if (WQCFG..WQCFG + 64 * NUM_WQS as u64).contains(&q) => {
                let i = (q - WQCFG) as usize;
                let (wq, d) = (i / 64, (i % 64) / 4);
                pair(self.wqcfg_dword(wq, d), self.wqcfg_dword(wq, d + 1))
            }
            q if (MSIX_PERM..MSIX_PERM + 8 * u64::from(MSIX_VECTORS)).contains(&q) => {
                u64::from(self.msix_perm[((q - MSIX_PERM) / 8) as usize])
            }
            _ => 0,
        }
    }

    /// WQCFG dword `d` of work queue `wq`, with its read-only fields.
    fn wqcfg_dword(&self, wq: usize, d: usize) -> u32 {
        let q = &self.wqs[wq];
        match d {
            // occupancy (15:0), mode support (29), state (31:30)
            6 => q.queue.len() as u32 | 1 << 29 | u32::from(q.enabled) << 30,
            _ => q.cfg[d],
        }
    }

    /// A write of the bits `mask` of `value` to the qword at `qword`.
    fn write_qword(&mut self, ctx: &mut Ctx<'_>, qword: u64, mask: u64, value: u64) {
        let merge = |old: u64| (old & !mask) | (value & mask);
        let low = |v: u64| v as u32;
        match qword {
            reg::GENCFG if !self.enabled => self.gencfg = low(merge(self.gencfg.into())) & 0x30ff,
            reg::GENCTRL => self.genctrl = low(merge(self.genctrl.into())) & 0x7,
            reg::INTCAUSE => self.intcause &= !low(value & mask),
            reg::CMD if mask & 0xffff_ffff != 0 => {
                self.cmd = low(merge(self.cmd.into()));
                self.command(ctx, self.cmd);
            }
            reg::SWERR => self.swerr[0] &= !(value & mask & SWERR_ACK),
            q if (GRPCFG..GRPCFG + 64 * NUM_GROUPS as u64).contains(&q) => {
                if self.enabled {
                    return; // configuration is fixed while enabled
                }
                let i = (q - GRPCFG) as usize;
                let (g, f) = (i / 64, (i % 64) / 8);
                let valid = match f {
                    0 => (1u64 << NUM_WQS) - 1,
                    1..=3 => 0, // work queues 64 and up: none
                    4 => (1u64 << NUM_ENGINES) - 1,
                    5 => u64::MAX,
                    _ => 0,
                };
                self.grpcfg[g][f] = merge(self.grpcfg[g][f]) & valid;
            }
            q if (WQCFG..WQCFG + 64 * NUM_WQS as u64).contains(&q) => {
                let i = (q - WQCFG) as usize;
                let (wq, d) = (i / 64, (i % 64) / 4);
                if self.wqs[wq].enabled {
                    return;
                }
                for (k, shift) in [(d, 0), (d + 1, 32)] {
                    let m = (mask >> shift) as u32;
                    if m == 0 || k == 6 || k == 7 {
                        continue; // occupancy and state are read-only
                    }
                    let cfg = &mut self.wqs[wq].cfg[k];
                    *cfg = (*cfg & !m) | ((value >> shift) as u32 & m);
                }
            }
            q if (MSIX_PERM..MSIX_PERM + 8 * u64::from(MSIX_VECTORS)).contains(&q) => {
                let p = &mut self.msix_perm[((q - MSIX_PERM) / 8) as usize];
                *p = low(merge((*p).into())) & 0xffff_f00c;
            }
            _ => {}
        }
    }

    fn command(&mut self, ctx: &mut Ctx<'_>, word: u32) {
        let operand = word & 0xf_ffff;
        let code = (word >> 20) & 0x1f;
        let err = match code {
            cmd::ENABLE_DEVICE => self.enable_device(ctx),
            cmd::DISABLE_DEVICE if !self.enabled => cmdsts::DIS_DEV_EN,
            cmd::DISABLE_DEVICE => {
                self.enabled = false;
                for wq in &mut self.wqs {
                    wq.enabled = false;
                    wq.queue.clear();
                }
                0
            }
            cmd::DRAIN_ALL => {
                self.run(ctx, u64::MAX);
                0
            }
            cmd::ABORT_ALL => {
                self.wqs.iter_mut().for_each(|q| q.queue.clear());
                0
            }
            cmd::RESET_DEVICE => {
                self.reset_device();
                0
            }
            cmd::ENABLE_WQ => self.enable_wq(operand as usize),
            cmd::DISABLE_WQ | cmd::DRAIN_WQ | cmd::ABORT_WQ | cmd::RESET_WQ => {
                self.wq_command(ctx, code, operand)
            }
            _ => cmdsts::INVAL_CMD,
        };
        self.cmdsts = err;
        if word & (1 << 31) != 0 {
            self.intcause |= INTC_CMD;
            ctx.raise_msix(0);
        }
    }

    fn enable_device(&mut self, ctx: &mut Ctx<'_>) -> u32 {
        if self.enabled {
            return cmdsts::DEV_ENABLED;
        }
        if !ctx.bus_master() {
            return cmdsts::BUSMASTER_EN;
        }
        let total: usize = self.wqs.iter().map(Wq::size).sum();
        if total > usize::from(TOTAL_WQ_SIZE) {
            return cmdsts::WQ_SIZE_ERANGE;
        }
        if self.grpcfg.iter().any(|g| g[0] != 0 && g[4] == 0) {
            return cmdsts::GRP_CONFIG;
        }
        self.enabled = true;
        0
    }

    /// The group of work queue `wq`, if one with an engine holds it.
    fn group_of(&self, wq: usize) -> Option<usize> {
        self.grpcfg
            .iter()
            .position(|g| g[0] & (1 << wq) != 0 && g[4] != 0)
    }

    fn enable_wq(&mut self, wq: usize) -> u32 {
        if !self.enabled {
            return cmdsts::DEV_NOTEN;
        }
        if wq >= NUM_WQS {
            return cmdsts::INVAL_WQIDX;
        }
        let in_group = self.group_of(wq).is_some();
        let q = &mut self.wqs[wq];
        let err = if q.enabled {
            cmdsts::WQ_ENABLED
        } else if q.size() == 0 || !in_group {
            cmdsts::WQ_SIZE
        } else if q.priority() == 0 {
            cmdsts::WQ_PRIOR
        } else if q.bof() {
            cmdsts::BOF_EN
        } else if q.max_xfer_shift() > u32::from(self.xfer_shift) {
            cmdsts::MAX_XFER_SIZE
        } else if q.max_batch_shift() > u32::from(MAX_BATCH_SHIFT) {
            cmdsts::MAX_BATCH_SIZE
        } else {
            0
        };
        if err == 0 {
            q.enabled = true;
        }
        err
    }

    /// Disable, drain, abort or reset the work queues of the bitmap
    /// `operand` (bits 15:0, block of 16 in bits 19:16).
    fn wq_command(&mut self, ctx: &mut Ctx<'_>, code: u32, operand: u32) -> u32 {
        if !self.enabled {
            return cmdsts::DEV_NOT_EN;
        }
        let base = ((operand >> 16) & 0xf) as usize * 16;
        let picked: Vec<usize> = (0..16)
            .filter(|b| operand & (1 << b) != 0)
            .map(|b| base + b)
            .collect();
        if picked.iter().any(|&i| i >= NUM_WQS) {
            return cmdsts::INVAL_WQIDX;
        }
        if code == cmd::DRAIN_WQ || code == cmd::DISABLE_WQ {
            self.run(ctx, u64::MAX);
        }
        for i in picked {
            let q = &mut self.wqs[i];
            q.queue.clear();
            match code {
                cmd::DISABLE_WQ => q.enabled = false,
                cmd::RESET_WQ => *q = Wq::default(),
                _ => {}
            }
        }
        0
    }

    /// RESET_DEVICE (and a function reset): disabled, configuration at its
    /// power-on values, queues empty, no error logged.
    fn reset_device(&mut self) {
        *self = Dsa {
            genctrl: 0,
            intcause: self.intcause,
            cmd: self.cmd,
            ..Dsa::new(self.device, self.xfer_shift)
        };
    }

    /// Logs a software error: SWERR (or its overflow bit if one is logged
    /// already), INTCAUSE, and vector 0 if GENCTRL asks.
    fn software_error(
        &mut self,
        ctx: &mut Ctx<'_>,
        error: u8,
        wq: Option<usize>,
        d: Option<&Descriptor>,
    ) {
        if self.swerr[0] & 1 != 0 {
            self.swerr[0] |= 2;
            return;
        }
        let mut w = 1u64 | u64::from(error) << 8;
        if let Some(i) = wq {
            w |= 1 << 3 | (i as u64) << 16;
        }
        if let Some(d) = d {
            w |= 1 << 2 | u64::from(d.opcode) << 32;
        }
        let cra = error == status::CRA_XLAT || error == status::CRA_ALIGN;
        let fault_addr = d.filter(|_| cra).map_or(0, |d| d.completion);
        self.swerr = [w, 0, fault_addr, 0];
        self.intcause |= INTC_ERR;
        if self.genctrl & GENCTRL_SOFTERR_INT != 0 {
            ctx.raise_msix(0);
        }
    }

    /// A 64-byte store to BAR2 at `offset`: the descriptor joins its work
    /// queue if there is room; returns whether it was accepted.
    fn submit(&mut self, ctx: &mut Ctx<'_>, offset: u64, data: &[u8; 64], how: Store64) -> bool {
        let wq = (offset / (4 * PORTAL_SIZE)) as usize;
        let d = Descriptor::from_bytes(data);
        let q = &self.wqs[wq];
        if !self.enabled || !q.enabled {
            self.software_error(ctx, swerr::WQ_DISABLED, Some(wq), Some(&d));
            return false;
        }
        if q.dedicated() != (how == Store64::Movdir64b) {
            self.software_error(ctx, swerr::WQ_MODE, Some(wq), Some(&d));
            return false;
        }
        if q.queue.len() >= q.size() {
            if how == Store64::Movdir64b {
                self.software_error(ctx, swerr::WQ_FULL, Some(wq), Some(&d));
            }
            return false; // ENQCMD: retry
        }
        self.wqs[wq].queue.push_back(*data);
        ctx.kick();
        true
    }

    /// Runs queued descriptors until none is left or `budget` bytes moved;
    /// returns whether work remains.
    fn run(&mut self, ctx: &mut Ctx<'_>, budget: u64) -> bool {
        let mut moved = 0u64;
        loop {
            let Some(wq) = (0..NUM_WQS)
                .map(|k| (self.next_wq + k) % NUM_WQS)
                .find(|&i| !self.wqs[i].queue.is_empty())
            else {
                return false;
            };
            if moved >= budget {
                return true;
            }
            self.next_wq = (wq + 1) % NUM_WQS;
            let raw = self.wqs[wq].queue.pop_front().expect("a queued descriptor");
            let d = Descriptor::from_bytes(&raw);
            moved += 64 + self.execute(ctx, wq, &d, false);
        }
    }

    /// Executes `d` from work queue `wq` (inside a batch if `in_batch`),
    /// writes its completion record and raises its interrupt; returns the
    /// bytes it moved and whether it succeeded.
    fn execute(&mut self, ctx: &mut Ctx<'_>, wq: usize, d: &Descriptor, in_batch: bool) -> u64 {
        self.execute_ok(ctx, wq, d, in_batch).0
    }

    fn execute_ok(
        &mut self,
        ctx: &mut Ctx<'_>,
        wq: usize,
        d: &Descriptor,
        in_batch: bool,
    ) -> (u64, bool) {
        let (record, moved) = self.operate(ctx, wq, d, in_batch);
        let ok = record.succeeded();
        self.descriptors += 1;
        self.complete(ctx, wq, d, record);
        (moved, ok)
    }

    /// The operation itself: its completion record and bytes moved.
    fn operate(
        &mut self,
        ctx: &mut Ctx<'_>,
        wq: usize,
        d: &Descriptor,
        in_batch: bool,
    ) -> (Record, u64) {
        let unknown = d.flags & !KNOWN_FLAGS;
        if unknown != 0 {
            let mut r = Record::error(status::INVALID_FLAGS);
            r.invalid_flags = unknown;
            return (r, 0);
        }
        if d.flags & flag::RCI != 0 && d.int_handle >= MSIX_VECTORS {
            return (Record::error(status::INT_HANDLE_INVAL), 0);
        }
        let q = &self.wqs[wq];
        match d.opcode {
            op::NOOP | op::DRAIN => (Record::ok(), 0),
            op::MEMMOVE => {
                let max = 1u64 << q.max_xfer_shift();
                let len = u64::from(d.size);
                if len == 0 || len > max {
                    return (Record::error(status::XFER_ERANGE), 0);
                }
                if d.src < d.dst.wrapping_add(len) && d.dst < d.src.wrapping_add(len) {
                    return (Record::error(status::OVERLAP_BUFFERS), 0);
                }
                match copy(ctx, d.src, d.dst, len) {
                    Ok(()) => {
                        self.copied += len;
                        (Record::ok(), len)
                    }
                    Err((done, side, at)) => {
                        self.copied += done;
                        let write = if side == DmaSide::Write {
                            status::WRITE
                        } else {
                            0
                        };
                        let r = Record {
                            status: status::PAGE_FAULT_NOBOF | write,
                            bytes: done as u32,
                            fault_addr: at,
                            invalid_flags: 0,
                        };
                        (r, done)
                    }
                }
            }
            op::BATCH if !in_batch => self.batch(ctx, wq, d),
            _ => (Record::error(status::BAD_OPCODE), 0),
        }
    }

    /// A batch: its descriptors, read from `d.src`, in order.
    fn batch(&mut self, ctx: &mut Ctx<'_>, wq: usize, d: &Descriptor) -> (Record, u64) {
        let max = 1u64 << self.wqs[wq].max_batch_shift();
        let count = u64::from(d.size);
        if count < 2 || count > max {
            return (Record::error(status::DESC_CNT_ERANGE), 0);
        }
        if d.src % 64 != 0 {
            return (Record::error(status::DESCLIST_ALIGN), 0);
        }
        let mut list = vec![0u8; (count * 64) as usize];
        if ctx.dma_read(d.src, &mut list).is_err() {
            let mut r = Record::error(status::BATCH_PAGE_FAULT);
            r.fault_addr = d.src;
            return (r, 0);
        }
        let (mut moved, mut succeeded) = (0u64, 0u32);
        for raw in list.chunks_exact(64) {
            let sub = Descriptor::from_bytes(raw.try_into().expect("64 bytes"));
            let (m, ok) = self.execute_ok(ctx, wq, &sub, true);
            moved += m + 64;
            succeeded += u32::from(ok);
        }
        let mut r = if u64::from(succeeded) == count {
            Record::ok()
        } else {
            Record::error(status::BATCH_FAIL)
        };
        r.bytes = succeeded;
        (r, moved)
    }

    /// Writes `d`'s completion record (if it asked for one, or after an
    /// error if it has an address) and raises its interrupt.
    fn complete(&mut self, ctx: &mut Ctx<'_>, wq: usize, d: &Descriptor, record: Record) {
        let failed = !record.succeeded();
        let crav = d.flags & flag::CRAV != 0;
        if crav && (d.flags & flag::RCR != 0 || failed) {
            if d.completion % RECORD as u64 != 0 {
                return self.software_error(ctx, status::CRA_ALIGN, Some(wq), Some(d));
            }
            let bytes = record.to_bytes();
            // The status byte last: the program polls it.
            let rest = ctx.dma_write(d.completion + 1, &bytes[1..]);
            if rest
                .and_then(|()| ctx.dma_write(d.completion, &bytes[..1]))
                .is_err()
            {
                return self.software_error(ctx, status::CRA_XLAT, Some(wq), Some(d));
            }
        } else if failed {
            self.software_error(ctx, record.status & 0x7f, Some(wq), Some(d));
        }
        if d.flags & flag::RCI != 0 && d.int_handle < MSIX_VECTORS {
            ctx.raise_msix(u32::from(d.int_handle));
        }
    }
}

/// Copies `len` bytes by IOVA; on a fault, the bytes completed before the
/// first 4 KiB page that faulted, the side, and the faulting address.
fn copy(ctx: &mut Ctx<'_>, src: u64, dst: u64, len: u64) -> Result<(), (u64, DmaSide, u64)> {
    const CHUNK: u64 = crate::host::COPY_CHUNK as u64;
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(CHUNK);
        if ctx.dma_copy(src + done, dst + done, n).is_err() {
            // Again, page by page, to find the first page that faults.
            let end = done + n;
            while done < end {
                let to_page = |a: u64| 4096 - a % 4096;
                let m = (end - done)
                    .min(to_page(src + done))
                    .min(to_page(dst + done));
                if let Err((side, _)) = ctx.dma_copy(src + done, dst + done, m) {
                    let at = match side {
                        DmaSide::Read => src + done,
                        DmaSide::Write => dst + done,
                    };
                    return Err((done, side, at));
                }
                done += m;
            }
            continue;
        }
        done += n;
    }
    Ok(())
}

impl DeviceModel for Dsa {
    fn layout(&self) -> Layout {
        Layout::new(VENDOR, self.device)
            .class(0x08_80_00) // base system peripheral, other
            .region(
                0,
                RegionKind::Registers {
                    size: BAR0_SIZE,
                    mmap: true,
                    bits64: true,
                },
            )
            .region(
                2,
                RegionKind::Registers {
                    size: BAR2_SIZE,
                    mmap: true,
                    bits64: true,
                },
            )
            .msix(MSIX_VECTORS, 0, MSIX_TABLE, MSIX_PBA)
            .extended_config()
    }

    fn read(&mut self, _: &mut Ctx<'_>, region: u32, offset: u64, width: Width) -> u64 {
        if region != 0 {
            return 0;
        }
        let shift = 8 * (offset % 8);
        (self.qword(offset & !7) >> shift) & width.mask()
    }

    fn write(&mut self, ctx: &mut Ctx<'_>, region: u32, offset: u64, width: Width, value: u64) {
        if region != 0 {
            return; // a portal takes 64-byte stores only
        }
        let shift = 8 * (offset % 8);
        self.write_qword(ctx, offset & !7, width.mask() << shift, value << shift);
    }

    fn write64(
        &mut self,
        ctx: &mut Ctx<'_>,
        region: u32,
        offset: u64,
        data: &[u8; 64],
        how: Store64,
    ) -> bool {
        region == 2 && self.submit(ctx, offset, data, how)
    }

    fn reset(&mut self) {
        *self = Dsa::new(self.device, self.xfer_shift);
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
            flags: flag::CRAV | flag::RCR | flag::RCI,
            opcode: op::MEMMOVE,
            completion: 0x1000,
            src: 0x2000,
            dst: 0x3000,
            size: 4096,
            int_handle: 1,
        };
        assert_eq!(Descriptor::from_bytes(&d.to_bytes()), d);
    }

    #[test]
    fn capabilities_decode_as_the_driver_reads_them() {
        let dsa = Dsa::default();
        let gencap = dsa.qword(reg::GENCAP);
        assert_eq!((gencap >> 16) & 0x1f, 16, "max_xfer_shift");
        assert_eq!((gencap >> 21) & 0xf, 10, "max_batch_shift");
        assert_eq!(gencap & (1 << 4), 0, "no command capability register");
        let wqcap = dsa.qword(reg::WQCAP);
        assert_eq!(wqcap & 0xffff, 128);
        assert_eq!((wqcap >> 16) & 0xff, 8);
        assert_eq!(1 << (((wqcap >> 24) & 0xf) + 5), 64, "WQCFG bytes");
        let t = dsa.qword(reg::TABLE_OFFSET);
        assert_eq!((t & 0xffff) * 0x100, GRPCFG);
        assert_eq!(((t >> 16) & 0xffff) * 0x100, WQCFG);
    }
}
