//! An Intel 82576 Gigabit Ethernet controller (igb, 8086:10c9), one port,
//! as its physical function presents itself: built to the 82576 datasheet,
//! with QEMU's igb model and Linux's igb driver as references.
//!
//! BAR0 is 128 KiB of registers (32-bit BAR); BAR3 holds the MSI-X table
//! (10 vectors, at 0) and its PBA (at 0x2000), emulated by barmap. The
//! function also has MSI and an INTx pin. Registers are 32 bits wide;
//! narrower accesses read or merge into the dword, an 8-byte access is two
//! dword accesses.
//!
//! What it models:
//! - **Control and status**: CTRL (RST and DEV_RST reset the MAC,
//!   PHY_RST the PHY; all self-clearing), STATUS (link up, full duplex,
//!   1000 Mb/s while the link is up; GIO master enable follows
//!   CTRL.GIO_MASTER_DISABLE). The link is up while CTRL.SLU is set, the
//!   PHY is in loopback, or the port is connected to a peer; a change sets
//!   ICR.LSC.
//! - **NVM**: 64 words read through EERD (start/done, data in 31:16), with
//!   the MAC address in words 0..3 and the checksum word 0x3f making the
//!   sum 0xBABA; EECD reports the NVM present, auto-read done (at once
//!   after a reset) and grants EE_REQ; EEMNGCTL reports the configuration
//!   cycle done. RAL0/RAH0 load the NVM's MAC at reset.
//! - **PHY** over MDIC (PHY address 1; others set MDIC.ERROR): an IGP3
//!   PHY's ID registers, BMCR (reset and restart-autonegotiation complete
//!   at once, loopback), BMSR (link, autonegotiation complete),
//!   advertisement and 1000BASE-T status; other PHY registers hold what
//!   was written.
//! - **Receive and transmit control**: RCTL (EN, UPE, MPE, BAM, LPE, MO,
//!   VFE, SECRC, BSIZE, and LBM = MAC loopback), TCTL (EN, PSP), SRRCTL
//!   (BSIZEPACKET and DESCTYPE: legacy or advanced one-buffer; the header
//!   split types are handled as one buffer), RXDCTL/TXDCTL enables.
//! - **16 queue pairs** (registers at 0xc000/0xe000, queues 0..3 also at
//!   0x2800/0x3800) with legacy and advanced descriptors and their
//!   write-backs (DD on RS for transmit; DD, EOP, length, packet type and
//!   RSS hash for receive), transmit head write-back (TDWBAL/H).
//! - **Receive filtering**: unicast by RAL/RAH (24 entries, AV), multicast
//!   by MTA hash (MO), broadcast by BAM, promiscuous UPE/MPE, VLAN by VFTA
//!   with RCTL.VFE. Queue selection by RSS (MRQC RSS modes, Toeplitz hash
//!   over IPv4/IPv6 addresses and TCP/UDP ports as MRQC selects, RETA);
//!   without RSS, queue 0.
//! - **Statistics**, read-to-clear (the 64-bit octet counters clear when
//!   their high half is read): CRCERRS..TSCTFC (0x4000..0x4100), and per
//!   queue RQDPC.
//! - **Interrupts**: in MSI-X mode (GPIE.Multiple_MSIX) queue causes map to
//!   vectors through IVAR, other causes through IVAR_MISC; EICR (read- and
//!   write-1-to-clear), EICS, EIMS/EIMC, EIAC (auto-clear on the MSI-X
//!   message) and EIAM with GPIE.EIAME (auto-mask). Otherwise ICR
//!   (read-to-clear), ICS, IMS/IMC by MSI or INTx (level).
//! - **Loopback and the wire**: a frame transmitted while RCTL.LBM
//!   selects MAC loopback or BMCR selects PHY loopback is received by the
//!   same port; otherwise it goes onto the port's [`Wire`], if any (`barmap
//!   run --device igb,wire=NAME` twice connects two ports back to back),
//!   and is received by the other end, or is dropped with no cable. A
//!   frame that finds no receive descriptor waits on the wire (up to
//!   [`WIRE_DEPTH`] frames, the packet buffer; beyond that it is missed,
//!   MPC) until the driver writes RDT.
//! - **Resets**: CTRL.RST and a function-level reset return every register
//!   to its power-on value (FLR also the PHY).
//!
//! Left out: checksum offload and TSO (context descriptors are accepted
//! and ignored; no checksum is inserted), VLAN tag insertion and
//! stripping, header split, virtualization (VFs, VMDq pools, mailboxes),
//! flow control, interrupt moderation (EITR is stored, interrupts are
//! immediate), IAM auto-masking of IMS, timestamps (1588), the flash and
//! I/O BARs, bit-banged EEPROM access, wake-up and management, NVM writes,
//! and packet-buffer space (a frame finding no receive descriptor is
//! dropped and counted in MPC, RNBC and RQDPC).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};

use crate::device::Waker;

use crate::model::{Ctx, DeviceModel, IrqMode, Layout, RegionKind, Width};

/// Intel's vendor ID.
pub const VENDOR: u16 = 0x8086;
/// The 82576's device ID (copper).
pub const DEVICE: u16 = 0x10c9;
/// BAR0's size.
pub const BAR0_SIZE: u64 = 128 << 10;
/// The MSI-X BAR.
pub const MSIX_BAR: u32 = 3;
/// BAR3's size.
pub const BAR3_SIZE: u64 = 16 << 10;
/// MSI-X vectors.
pub const MSIX_VECTORS: u16 = 10;
/// Queue pairs.
pub const QUEUES: usize = 16;
/// The default MAC address.
pub const DEFAULT_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// NVM words.
pub const NVM_WORDS: usize = 64;
/// What the NVM's words 0..=0x3f sum to.
pub const NVM_SUM: u16 = 0xbaba;
/// The PHY's address on MDIO.
pub const PHY_ADDR: u32 = 1;
/// The PHY's identifier (IGP3), PHYID1 << 16 | PHYID2.
pub const PHY_ID: u32 = 0x02a8_0390;

/// Register offsets in BAR0.
pub mod reg {
    /// Device control.
    pub const CTRL: u64 = 0x0000;
    /// Device status.
    pub const STATUS: u64 = 0x0008;
    /// EEPROM/flash control.
    pub const EECD: u64 = 0x0010;
    /// EEPROM read.
    pub const EERD: u64 = 0x0014;
    /// Extended device control.
    pub const CTRL_EXT: u64 = 0x0018;
    /// MDI control.
    pub const MDIC: u64 = 0x0020;
    /// Management EEPROM control.
    pub const EEMNGCTL: u64 = 0x1010;
    /// Interrupt cause read.
    pub const ICR: u64 = 0x00c0;
    /// Interrupt cause set.
    pub const ICS: u64 = 0x00c8;
    /// Interrupt mask set/read.
    pub const IMS: u64 = 0x00d0;
    /// Interrupt mask clear.
    pub const IMC: u64 = 0x00d8;
    /// Interrupt acknowledge auto-mask.
    pub const IAM: u64 = 0x00e0;
    /// Receive control.
    pub const RCTL: u64 = 0x0100;
    /// Transmit control.
    pub const TCTL: u64 = 0x0400;
    /// General purpose interrupt enable.
    pub const GPIE: u64 = 0x1514;
    /// Extended interrupt cause set.
    pub const EICS: u64 = 0x1520;
    /// Extended interrupt mask set/read.
    pub const EIMS: u64 = 0x1524;
    /// Extended interrupt mask clear.
    pub const EIMC: u64 = 0x1528;
    /// Extended interrupt auto-clear.
    pub const EIAC: u64 = 0x152c;
    /// Extended interrupt auto-mask.
    pub const EIAM: u64 = 0x1530;
    /// Extended interrupt cause read.
    pub const EICR: u64 = 0x1580;
    /// Interrupt throttle, vector 0 (25 of them, 4 bytes apart).
    pub const EITR0: u64 = 0x1680;
    /// Interrupt vector allocation, queues 0 and 8 (8 of them).
    pub const IVAR0: u64 = 0x1700;
    /// Interrupt vector allocation, other causes.
    pub const IVAR_MISC: u64 = 0x1740;
    /// Statistics: the first (CRCERRS).
    pub const STATS_FIRST: u64 = 0x4000;
    /// Statistics: the last (TSCTFC).
    pub const STATS_LAST: u64 = 0x40fc;
    /// Multicast table array (128 dwords).
    pub const MTA: u64 = 0x5200;
    /// Receive address low, entry 0 (entries 0..16 8 bytes apart).
    pub const RAL0: u64 = 0x5400;
    /// Receive address high, entry 0.
    pub const RAH0: u64 = 0x5404;
    /// Receive address low, entry 16 (entries 16..24).
    pub const RAL16: u64 = 0x54e0;
    /// VLAN filter table array (128 dwords).
    pub const VFTA: u64 = 0x5600;
    /// Multiple receive queues control.
    pub const MRQC: u64 = 0x5818;
    /// Software semaphore.
    pub const SWSM: u64 = 0x5b50;
    /// Firmware semaphore.
    pub const FWSM: u64 = 0x5b54;
    /// Redirection table (32 dwords).
    pub const RETA: u64 = 0x5c00;
    /// RSS random key (10 dwords).
    pub const RSSRK: u64 = 0x5c80;
    /// Receive queue 0's registers (queue n at + 0x40 n).
    pub const RXQ0: u64 = 0xc000;
    /// Transmit queue 0's registers (queue n at + 0x40 n).
    pub const TXQ0: u64 = 0xe000;
    /// Receive queues 0..4, old location (+ 0x100 n).
    pub const RXQ0_ALIAS: u64 = 0x2800;
    /// Transmit queues 0..4, old location (+ 0x100 n).
    pub const TXQ0_ALIAS: u64 = 0x3800;
}

/// Offsets within a queue's registers.
pub mod q {
    /// Descriptor ring base, low.
    pub const BAL: u64 = 0x00;
    /// Descriptor ring base, high.
    pub const BAH: u64 = 0x04;
    /// Descriptor ring length, bytes.
    pub const LEN: u64 = 0x08;
    /// Receive: split and replication control.
    pub const SRRCTL: u64 = 0x0c;
    /// Head.
    pub const H: u64 = 0x10;
    /// Tail.
    pub const T: u64 = 0x18;
    /// Queue control.
    pub const DCTL: u64 = 0x28;
    /// Receive: dropped packets (read-to-clear).
    pub const RQDPC: u64 = 0x30;
    /// Transmit: head write-back address, low (bit 0 enables).
    pub const WBAL: u64 = 0x38;
    /// Transmit: head write-back address, high.
    pub const WBAH: u64 = 0x3c;
}

/// Statistics offsets (all read-to-clear).
pub mod stat {
    /// Missed packets.
    pub const MPC: u64 = 0x4010;
    /// Good packets received.
    pub const GPRC: u64 = 0x4074;
    /// Broadcast packets received.
    pub const BPRC: u64 = 0x4078;
    /// Multicast packets received.
    pub const MPRC: u64 = 0x407c;
    /// Good packets transmitted.
    pub const GPTC: u64 = 0x4080;
    /// Good octets received, low.
    pub const GORCL: u64 = 0x4088;
    /// Good octets received, high.
    pub const GORCH: u64 = 0x408c;
    /// Good octets transmitted, low.
    pub const GOTCL: u64 = 0x4090;
    /// Good octets transmitted, high.
    pub const GOTCH: u64 = 0x4094;
    /// Receive no buffers.
    pub const RNBC: u64 = 0x40a0;
    /// Receive undersize.
    pub const RUC: u64 = 0x40a4;
    /// Receive oversize.
    pub const ROC: u64 = 0x40ac;
    /// Total octets received, low.
    pub const TORL: u64 = 0x40c0;
    /// Total octets received, high.
    pub const TORH: u64 = 0x40c4;
    /// Total octets transmitted, low.
    pub const TOTL: u64 = 0x40c8;
    /// Total octets transmitted, high.
    pub const TOTH: u64 = 0x40cc;
    /// Total packets received.
    pub const TPR: u64 = 0x40d0;
    /// Total packets transmitted.
    pub const TPT: u64 = 0x40d4;
    /// Packets received of 64 bytes (then 65-127, ..., 1024-1522: +4 each).
    pub const PRC64: u64 = 0x405c;
    /// Packets transmitted of 64 bytes (then 65-127, ..., 1024-1522).
    pub const PTC64: u64 = 0x40d8;
    /// Multicast packets transmitted.
    pub const MPTC: u64 = 0x40f0;
    /// Broadcast packets transmitted.
    pub const BPTC: u64 = 0x40f4;
}

/// CTRL: full duplex.
pub const CTRL_FD: u32 = 1 << 0;
/// CTRL: GIO master disable.
pub const CTRL_GIO_MASTER_DISABLE: u32 = 1 << 2;
/// CTRL: set link up.
pub const CTRL_SLU: u32 = 1 << 6;
/// CTRL: software reset.
pub const CTRL_RST: u32 = 1 << 26;
/// CTRL: device reset.
pub const CTRL_DEV_RST: u32 = 1 << 29;
/// CTRL: PHY reset.
pub const CTRL_PHY_RST: u32 = 1 << 31;
/// STATUS: full duplex.
pub const STATUS_FD: u32 = 1 << 0;
/// STATUS: link up.
pub const STATUS_LU: u32 = 1 << 1;
/// STATUS: 1000 Mb/s.
pub const STATUS_SPEED_1000: u32 = 1 << 7;
/// STATUS: GIO master enabled.
pub const STATUS_GIO_MASTER_ENABLE: u32 = 1 << 19;
/// STATUS: PF reset done.
pub const STATUS_PF_RST_DONE: u32 = 1 << 21;
/// EECD: request the NVM.
pub const EECD_REQ: u32 = 1 << 6;
/// EECD: NVM granted.
pub const EECD_GNT: u32 = 1 << 7;
/// EECD: NVM present.
pub const EECD_PRES: u32 = 1 << 8;
/// EECD: NVM auto-read done.
pub const EECD_AUTO_RD: u32 = 1 << 9;
/// EECD: the size field's value (64 words: 2^(0 + 6)).
pub const EECD_SIZE: u32 = 0 << 11;
/// EEMNGCTL: the port's configuration cycle from the NVM is done.
pub const EEMNGCTL_CFG_DONE: u32 = 1 << 18;
/// EERD: start.
pub const EERD_START: u32 = 1 << 0;
/// EERD: done.
pub const EERD_DONE: u32 = 1 << 1;
/// MDIC: write.
pub const MDIC_OP_WRITE: u32 = 1 << 26;
/// MDIC: read.
pub const MDIC_OP_READ: u32 = 2 << 26;
/// MDIC: ready.
pub const MDIC_READY: u32 = 1 << 28;
/// MDIC: error.
pub const MDIC_ERROR: u32 = 1 << 30;
/// ICR: transmit descriptor written back.
pub const ICR_TXDW: u32 = 1 << 0;
/// ICR: link status change.
pub const ICR_LSC: u32 = 1 << 2;
/// ICR: receive timer (a frame received).
pub const ICR_RXT0: u32 = 1 << 7;
/// ICR: an interrupt is asserted.
pub const ICR_INT_ASSERTED: u32 = 1 << 31;
/// GPIE: ICR clears on read only while an interrupt is asserted.
pub const GPIE_NSICR: u32 = 1 << 0;
/// GPIE: MSI-X mode (causes mapped to vectors by IVAR).
pub const GPIE_MSIX_MODE: u32 = 1 << 4;
/// GPIE: EIAM applies when an MSI-X message is sent.
pub const GPIE_EIAME: u32 = 1 << 30;
/// IVAR: the entry is valid.
pub const IVAR_VALID: u32 = 0x80;
/// RCTL: receiver enable.
pub const RCTL_EN: u32 = 1 << 1;
/// RCTL: unicast promiscuous.
pub const RCTL_UPE: u32 = 1 << 3;
/// RCTL: multicast promiscuous.
pub const RCTL_MPE: u32 = 1 << 4;
/// RCTL: long packets.
pub const RCTL_LPE: u32 = 1 << 5;
/// RCTL: MAC loopback (LBM = 01).
pub const RCTL_LBM_MAC: u32 = 1 << 6;
/// RCTL: loopback mode bits.
pub const RCTL_LBM: u32 = 3 << 6;
/// RCTL: broadcast accept.
pub const RCTL_BAM: u32 = 1 << 15;
/// RCTL: VLAN filter enable.
pub const RCTL_VFE: u32 = 1 << 18;
/// RCTL: buffer size extension (x16).
pub const RCTL_BSEX: u32 = 1 << 25;
/// RCTL: strip the Ethernet CRC.
pub const RCTL_SECRC: u32 = 1 << 26;
/// TCTL: transmitter enable.
pub const TCTL_EN: u32 = 1 << 1;
/// TCTL: pad short packets.
pub const TCTL_PSP: u32 = 1 << 3;
/// RXDCTL/TXDCTL: the queue is enabled.
pub const DCTL_ENABLE: u32 = 1 << 25;
/// SRRCTL: descriptor type, advanced one buffer.
pub const SRRCTL_DESCTYPE_ADV_ONEBUF: u32 = 1 << 25;
/// PHY register: basic mode control.
pub const MII_BMCR: u32 = 0;
/// PHY register: basic mode status.
pub const MII_BMSR: u32 = 1;
/// BMCR: reset.
pub const BMCR_RESET: u16 = 0x8000;
/// BMCR: loopback.
pub const BMCR_LOOPBACK: u16 = 0x4000;
/// BMCR: restart autonegotiation.
pub const BMCR_ANRESTART: u16 = 0x0200;
/// BMSR: link up.
pub const BMSR_LSTATUS: u16 = 0x0004;
/// BMSR: autonegotiation complete.
pub const BMSR_ANEGCOMPLETE: u16 = 0x0020;

/// Transmit descriptor: end of packet (legacy CMD bit 0; advanced DCMD
/// bit 24).
const TXD_EOP: u32 = 1 << 24;
/// Insert FCS.
const TXD_IFCS: u32 = 1 << 25;
/// Report status.
const TXD_RS: u32 = 1 << 27;
/// Descriptor extension: advanced.
const TXD_DEXT: u32 = 1 << 29;
/// Advanced descriptor type: data (DTYP 3) in bits 23:20.
const TXD_DTYP_DATA: u32 = 3;
/// Receive status: descriptor done.
const RXD_DD: u32 = 1 << 0;
/// Receive status: end of packet.
const RXD_EOP: u32 = 1 << 1;
/// Bytes per descriptor.
const DESC: u64 = 16;
/// The Ethernet FCS.
const FCS: usize = 4;
/// The shortest frame, without FCS.
const MIN_FRAME: usize = 60;
/// The longest frame without RCTL.LPE, with FCS (a VLAN tag allows 4 more).
const MAX_FRAME: usize = 1518;
/// The most a transmit queue gathers for one frame (a TSO frame's
/// 64 KiB); a chain without EOP beyond it is dropped.
const MAX_TX_FRAME: usize = 64 << 10;
/// RLPML's reset value: 9728-byte long packets.
const RLPML_DEFAULT: u32 = 0x2600;
/// The long-packet maximum length register.
const RLPML: u64 = 0x5004;
/// Frames handled per run of the worker before it lets register accesses in.
const BUDGET: usize = 512;
/// Dwords of BAR0.
const WORDS: usize = (BAR0_SIZE / 4) as usize;

/// A read handler: the value of the dword at `index` (offset / 4).
type ReadOp = fn(&mut Igb, &mut Ctx<'_>, usize) -> u32;
/// A write handler: `value` to the dword at `index`.
type WriteOp = fn(&mut Igb, &mut Ctx<'_>, usize, u32);

/// Frames a wire holds towards one end before it drops them (the far
/// port's packet buffer).
pub const WIRE_DEPTH: usize = 1024;

/// A cable between two ports: each end's frames queue towards the other,
/// whose worker is woken to receive them.
#[derive(Debug, Default)]
pub struct Wire {
    /// Frames in flight towards each end (index: the receiving end).
    queues: Mutex<[VecDeque<Vec<u8>>; 2]>,
    /// Frames dropped towards each end because its queue was full.
    missed: Mutex<[u32; 2]>,
    /// Each end's worker.
    wakers: Mutex<[Option<Waker>; 2]>,
}

impl Wire {
    /// Sends `frame` (with its FCS) from end `from` to the other end; a
    /// full queue drops it (counted at the receiver as missed).
    fn send(&self, from: usize, frame: Vec<u8>) {
        let to = 1 - from;
        {
            let mut q = self.queues.lock().unwrap();
            if q[to].len() >= WIRE_DEPTH {
                self.missed.lock().unwrap()[to] += 1;
                return;
            }
            q[to].push_back(frame);
        }
        if let Some(w) = &self.wakers.lock().unwrap()[to] {
            w.wake();
        }
    }

    fn take(&self, end: usize) -> Option<Vec<u8>> {
        self.queues.lock().unwrap()[end].pop_front()
    }

    fn put_back(&self, end: usize, frame: Vec<u8>) {
        self.queues.lock().unwrap()[end].push_front(frame);
    }

    fn pending(&self, end: usize) -> bool {
        !self.queues.lock().unwrap()[end].is_empty()
    }

    fn take_missed(&self, end: usize) -> u32 {
        std::mem::take(&mut self.missed.lock().unwrap()[end])
    }

    /// Plugs end `end` into a port whose worker `waker` wakes.
    pub fn attach(&self, end: usize, waker: Waker) {
        self.wakers.lock().unwrap()[end] = Some(waker);
    }
}

/// The process's named wires: the first two ports that name a wire are
/// its ends 0 and 1 (a third port gets a new wire of the same name).
pub fn named_wire(name: &str) -> (Arc<Wire>, usize) {
    /// (name, wire, ends taken).
    type Named = (String, Arc<Wire>, usize);
    static WIRES: OnceLock<Mutex<Vec<Named>>> = OnceLock::new();
    let mut all = WIRES.get_or_init(Default::default).lock().unwrap();
    if let Some(e) = all.iter_mut().find(|(n, _, ends)| n == name && *ends < 2) {
        e.2 += 1;
        return (e.1.clone(), e.2 - 1);
    }
    let w = Arc::new(Wire::default());
    all.push((name.to_string(), w.clone(), 1));
    (w, 0)
}

/// What became of a received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rx {
    /// In a queue's buffers.
    Delivered,
    /// Dropped by the receiver (disabled, filtered, malformed) or missed.
    Dropped,
    /// No receive descriptor for it: it may wait on the wire.
    NoDescriptors,
}

/// The 82576's state.
pub struct Igb {
    mac: [u8; 6],
    nvm: [u16; NVM_WORDS],
    /// Every dword of BAR0, as the plain registers hold it.
    regs: Vec<u32>,
    phy: [u16; 32],
    /// A transmit queue's frame being gathered from its descriptors.
    tx_frame: Vec<Vec<u8>>,
    /// Queues stopped by an IOMMU fault (until re-enabled or reset).
    tx_halted: [bool; QUEUES],
    rx_halted: [bool; QUEUES],
    link: bool,
    /// The wire this port plugs into when it first runs.
    wire_name: Option<String>,
    /// The wire and this port's end of it.
    port: Option<(Arc<Wire>, usize)>,
    frames_tx: u64,
    frames_rx: u64,
}

impl std::fmt::Debug for Igb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Igb")
            .field("mac", &self.mac)
            .field("frames_tx", &self.frames_tx)
            .field("frames_rx", &self.frames_rx)
            .finish_non_exhaustive()
    }
}

impl Default for Igb {
    fn default() -> Self {
        Igb::new(DEFAULT_MAC)
    }
}

/// Whether `mac` is a unicast address (the group bit clear).
fn is_unicast(mac: &[u8]) -> bool {
    mac[0] & 1 == 0
}

/// The NVM of a port with address `mac`: the address in words 0..3, the
/// checksum in word 0x3f.
pub fn nvm_image(mac: [u8; 6]) -> [u16; NVM_WORDS] {
    let mut nvm = [0u16; NVM_WORDS];
    for i in 0..3 {
        nvm[i] = u16::from_le_bytes([mac[2 * i], mac[2 * i + 1]]);
    }
    nvm[0x0a] = 0x4000; // initialization control 1: valid signature (01b in 15:14)
    let sum = nvm[..0x3f].iter().fold(0u16, |s, w| s.wrapping_add(*w));
    nvm[0x3f] = NVM_SUM.wrapping_sub(sum);
    nvm
}

/// The reflected CRC-32 (IEEE 802.3) of each byte value, for
/// [`crc32`]'s byte at a time.
const CRC32_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = (crc >> 1) ^ (0xedb8_8320 & (crc & 1).wrapping_neg());
            bit += 1;
        }
        t[i] = crc;
        i += 1;
    }
    t
};

/// The Ethernet FCS (CRC-32, IEEE 802.3) of `data`: a table lookup per
/// byte (a bit at a time cost a frame of the selftests' storm tens of
/// microseconds in an unoptimized build, more than the storm's bound).
pub fn crc32(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |crc, &b| {
        CRC32_TABLE[usize::from(crc as u8 ^ b)] ^ (crc >> 8)
    })
}

/// The Toeplitz hash of `input` under `key` (RSS).
fn toeplitz(key: &[u8; 40], input: &[u8]) -> u32 {
    let mut hash = 0u32;
    let mut window = u32::from_be_bytes([key[0], key[1], key[2], key[3]]);
    for (i, &b) in input.iter().enumerate() {
        for bit in 0..8 {
            if b & (0x80 >> bit) != 0 {
                hash ^= window;
            }
            let next = key.get(i + 4).copied().unwrap_or(0);
            window = (window << 1) | u32::from((next >> (7 - bit)) & 1);
        }
    }
    hash
}

fn idx(offset: u64) -> usize {
    (offset / 4) as usize
}

/// The handlers of BAR0's dwords: one table for reads, one for writes,
/// filled once. A dword without an entry is a plain register
/// ([`Igb::plain_read`], [`Igb::plain_write`]).
struct Ops {
    read: Vec<Option<ReadOp>>,
    write: Vec<Option<WriteOp>>,
}

fn ops() -> &'static Ops {
    static OPS: OnceLock<Ops> = OnceLock::new();
    OPS.get_or_init(|| {
        let mut o = Ops {
            read: vec![None; WORDS],
            write: vec![None; WORDS],
        };
        let mut r = |off: u64, f: ReadOp| o.read[idx(off)] = Some(f);
        r(reg::STATUS, Igb::status_read);
        r(reg::EECD, Igb::eecd_read);
        r(reg::ICR, Igb::icr_read);
        r(reg::ICS, Igb::zero_read);
        r(reg::IMC, Igb::zero_read);
        r(reg::EICS, Igb::zero_read);
        r(reg::EIMC, Igb::zero_read);
        r(reg::EICR, Igb::eicr_read);
        r(reg::SWSM, Igb::swsm_read);
        r(reg::EEMNGCTL, Igb::eemngctl_read);
        r(reg::FWSM, Igb::zero_read);
        for off in (reg::STATS_FIRST..=reg::STATS_LAST).step_by(4) {
            r(off, Igb::stat_read);
        }
        for (lo, hi) in [
            (stat::GORCL, stat::GORCH),
            (stat::GOTCL, stat::GOTCH),
            (stat::TORL, stat::TORH),
            (stat::TOTL, stat::TOTH),
        ] {
            r(lo, Igb::plain_read);
            r(hi, Igb::stat_high_read);
        }
        for n in 0..QUEUES as u64 {
            r(reg::RXQ0 + 0x40 * n + q::RQDPC, Igb::stat_read);
        }
        let mut w = |off: u64, f: WriteOp| o.write[idx(off)] = Some(f);
        w(reg::CTRL, Igb::ctrl_write);
        w(reg::STATUS, Igb::ignore_write);
        w(reg::EECD, Igb::eecd_write);
        w(reg::EERD, Igb::eerd_write);
        w(reg::MDIC, Igb::mdic_write);
        w(reg::ICR, Igb::icr_write);
        w(reg::ICS, Igb::ics_write);
        w(reg::IMS, Igb::ims_write);
        w(reg::IMC, Igb::imc_write);
        w(reg::EICR, Igb::eicr_write);
        w(reg::EICS, Igb::eics_write);
        w(reg::EIMS, Igb::eims_write);
        w(reg::EIMC, Igb::eimc_write);
        w(reg::TCTL, Igb::tctl_write);
        w(reg::RCTL, Igb::rctl_write);
        w(reg::FWSM, Igb::ignore_write);
        for off in (reg::STATS_FIRST..=reg::STATS_LAST).step_by(4) {
            w(off, Igb::ignore_write);
        }
        for n in 0..QUEUES as u64 {
            w(reg::RXQ0 + 0x40 * n + q::RQDPC, Igb::ignore_write);
            w(reg::TXQ0 + 0x40 * n + q::T, Igb::tdt_write);
            w(reg::RXQ0 + 0x40 * n + q::T, Igb::rdt_write);
            w(reg::TXQ0 + 0x40 * n + q::DCTL, Igb::txdctl_write);
            w(reg::RXQ0 + 0x40 * n + q::DCTL, Igb::rxdctl_write);
        }
        o
    })
}

/// Queues 0..4's registers at their old offsets (0x2800 + 0x100 n, 0x3800
/// + 0x100 n) are the same registers as at 0xc000/0xe000 + 0x40 n.
fn canonical(offset: u64) -> u64 {
    for (alias, base) in [(reg::RXQ0_ALIAS, reg::RXQ0), (reg::TXQ0_ALIAS, reg::TXQ0)] {
        if (alias..alias + 0x400).contains(&offset) && (offset - alias) % 0x100 < 0x40 {
            let n = (offset - alias) / 0x100;
            return base + 0x40 * n + (offset - alias) % 0x100;
        }
    }
    offset
}

/// A frame's length class for the PRC/PTC counters (with FCS):
/// 64, 65-127, 128-255, 256-511, 512-1023, 1024 and more.
fn size_bucket(len: usize) -> u64 {
    match len {
        0..=64 => 0,
        65..=127 => 1,
        128..=255 => 2,
        256..=511 => 3,
        512..=1023 => 4,
        _ => 5,
    }
}

impl Igb {
    /// A port with MAC address `mac`, at its power-on state.
    pub fn new(mac: [u8; 6]) -> Igb {
        let mut igb = Igb {
            mac,
            nvm: nvm_image(mac),
            regs: vec![0; WORDS],
            phy: [0; 32],
            tx_frame: vec![Vec::new(); QUEUES],
            tx_halted: [false; QUEUES],
            rx_halted: [false; QUEUES],
            link: false,
            wire_name: None,
            port: None,
            frames_tx: 0,
            frames_rx: 0,
        };
        igb.phy_reset();
        igb.mac_reset();
        igb
    }

    /// A port plugged into the wire called `name` (see [`named_wire`]):
    /// it attaches when the device first runs, so that models built only
    /// to check options take no end.
    pub fn with_wire(mut self, name: &str) -> Igb {
        self.wire_name = Some(name.to_string());
        self
    }

    /// Plugs the port into end `end` of `wire` now.
    pub fn connect(&mut self, ctx: &mut Ctx<'_>, wire: Arc<Wire>, end: usize) {
        wire.attach(end, ctx.waker());
        self.port = Some((wire, end));
        self.link_update(ctx);
    }

    fn plug_in(&mut self, ctx: &mut Ctx<'_>) {
        if self.port.is_none() {
            if let Some(name) = self.wire_name.take() {
                let (wire, end) = named_wire(&name);
                self.connect(ctx, wire, end);
            }
        }
    }

    /// The MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Frames transmitted since the last reset (onto the wire or looped).
    pub fn frames_transmitted(&self) -> u64 {
        self.frames_tx
    }

    /// Frames received into a queue since the last reset.
    pub fn frames_received(&self) -> u64 {
        self.frames_rx
    }

    fn r(&self, offset: u64) -> u32 {
        self.regs[idx(offset)]
    }

    fn set(&mut self, offset: u64, v: u32) {
        self.regs[idx(offset)] = v;
    }

    // --- reset ---

    /// The MAC's registers at their reset values (CTRL.RST): the receive
    /// address 0 from the NVM, queue 0's receiver enabled.
    fn mac_reset(&mut self) {
        self.regs.fill(0);
        self.set(reg::CTRL, CTRL_FD | (1 << 5) | (2 << 8)); // ASDE, 1000
        self.set(reg::CTRL_EXT, 0);
        self.set(
            reg::RAL0,
            u32::from_le_bytes([self.mac[0], self.mac[1], self.mac[2], self.mac[3]]),
        );
        self.set(
            reg::RAH0,
            u32::from(u16::from_le_bytes([self.mac[4], self.mac[5]])) | (1 << 31),
        );
        for n in 0..QUEUES as u64 {
            self.set(reg::RXQ0 + 0x40 * n + q::SRRCTL, 2); // 2 KiB buffers
        }
        self.set(reg::RXQ0 + q::DCTL, DCTL_ENABLE);
        self.set(RLPML, RLPML_DEFAULT);
        self.tx_frame.iter_mut().for_each(Vec::clear);
        self.tx_halted = [false; QUEUES];
        self.rx_halted = [false; QUEUES];
        self.link = self.link_up();
    }

    /// The PHY's registers at their reset values.
    fn phy_reset(&mut self) {
        self.phy = [0; 32];
        self.phy[0] = 0x1140; // autonegotiation, full duplex, 1000
        self.phy[1] = 0x7949; // capabilities; link and AN complete added when up
        self.phy[2] = (PHY_ID >> 16) as u16;
        self.phy[3] = PHY_ID as u16;
        self.phy[4] = 0x01e1;
        self.phy[5] = 0x45e1;
        self.phy[6] = 0x0007;
        self.phy[9] = 0x0300;
        self.phy[10] = 0x3c00;
        self.phy[15] = 0x3000;
    }

    // --- link ---

    fn phy_loopback(&self) -> bool {
        self.phy[MII_BMCR as usize] & BMCR_LOOPBACK != 0
    }

    fn link_up(&self) -> bool {
        self.r(reg::CTRL) & CTRL_SLU != 0 || self.phy_loopback() || self.port.is_some()
    }

    /// Re-evaluates the link; a change sets ICR.LSC.
    fn link_update(&mut self, ctx: &mut Ctx<'_>) {
        let up = self.link_up();
        if up != self.link {
            self.link = up;
            self.set_icr(ctx, ICR_LSC);
        }
    }

    // --- generic handlers ---

    fn plain_read(&mut self, _: &mut Ctx<'_>, i: usize) -> u32 {
        self.regs[i]
    }

    fn plain_write(&mut self, _: &mut Ctx<'_>, i: usize, v: u32) {
        self.regs[i] = v;
    }

    fn zero_read(&mut self, _: &mut Ctx<'_>, _: usize) -> u32 {
        0
    }

    fn ignore_write(&mut self, _: &mut Ctx<'_>, _: usize, _: u32) {}

    /// A statistics counter: read, then cleared.
    fn stat_read(&mut self, _: &mut Ctx<'_>, i: usize) -> u32 {
        std::mem::take(&mut self.regs[i])
    }

    /// The high half of a 64-bit counter: read, then the pair cleared.
    fn stat_high_read(&mut self, _: &mut Ctx<'_>, i: usize) -> u32 {
        self.regs[i - 1] = 0;
        std::mem::take(&mut self.regs[i])
    }

    fn count(&mut self, offset: u64, n: u32) {
        let i = idx(offset);
        self.regs[i] = self.regs[i].saturating_add(n);
    }

    fn count64(&mut self, low: u64, n: u64) {
        let i = idx(low);
        let v = (u64::from(self.regs[i + 1]) << 32 | u64::from(self.regs[i])).wrapping_add(n);
        self.regs[i] = v as u32;
        self.regs[i + 1] = (v >> 32) as u32;
    }

    // --- registers with side effects ---

    fn status_read(&mut self, _: &mut Ctx<'_>, _: usize) -> u32 {
        let mut s = STATUS_PF_RST_DONE;
        if self.link {
            s |= STATUS_LU | STATUS_FD | STATUS_SPEED_1000;
        }
        if self.r(reg::CTRL) & CTRL_GIO_MASTER_DISABLE == 0 {
            s |= STATUS_GIO_MASTER_ENABLE;
        }
        s
    }

    fn ctrl_write(&mut self, ctx: &mut Ctx<'_>, i: usize, v: u32) {
        if v & CTRL_PHY_RST != 0 {
            self.phy_reset();
        }
        if v & (CTRL_RST | CTRL_DEV_RST) != 0 {
            self.mac_reset();
            if ctx.irq_mode() == IrqMode::Intx {
                ctx.set_intx(false);
            }
            return;
        }
        self.regs[i] = v & !(CTRL_RST | CTRL_DEV_RST | CTRL_PHY_RST);
        self.link_update(ctx);
    }

    fn eecd_read(&mut self, _: &mut Ctx<'_>, i: usize) -> u32 {
        let req = self.regs[i] & EECD_REQ;
        let gnt = if req != 0 { EECD_GNT } else { 0 };
        req | gnt | EECD_PRES | EECD_AUTO_RD | EECD_SIZE
    }

    fn eecd_write(&mut self, _: &mut Ctx<'_>, i: usize, v: u32) {
        self.regs[i] = v & EECD_REQ;
    }

    /// EERD: a write with START reads the word at bits 15:2 at once.
    fn eerd_write(&mut self, _: &mut Ctx<'_>, i: usize, v: u32) {
        if v & EERD_START == 0 {
            self.regs[i] = v & !EERD_DONE;
            return;
        }
        let addr = (v >> 2) & 0x3fff;
        let word = self.nvm.get(addr as usize).copied().unwrap_or(0xffff);
        self.regs[i] = (u32::from(word) << 16) | (addr << 2) | EERD_DONE;
    }

    /// MDIC: one MDIO transaction, done at once.
    fn mdic_write(&mut self, ctx: &mut Ctx<'_>, i: usize, v: u32) {
        let data = v & 0xffff;
        let regnum = (v >> 16) & 0x1f;
        let phy = (v >> 21) & 0x1f;
        let op = v & (3 << 26);
        let mut out = v & !(MDIC_READY | MDIC_ERROR | (1 << 29));
        if phy != PHY_ADDR || (op != MDIC_OP_READ && op != MDIC_OP_WRITE) {
            out |= MDIC_ERROR;
        } else if op == MDIC_OP_READ {
            out = (out & !0xffff) | u32::from(self.phy_read(regnum));
        } else {
            self.phy_write(regnum, data as u16);
            self.link_update(ctx);
        }
        self.regs[i] = out | MDIC_READY;
    }

    fn phy_read(&self, regnum: u32) -> u16 {
        let v = self.phy[regnum as usize];
        if regnum == MII_BMSR && self.link {
            v | BMSR_LSTATUS | BMSR_ANEGCOMPLETE
        } else {
            v
        }
    }

    fn phy_write(&mut self, regnum: u32, v: u16) {
        match regnum {
            MII_BMCR if v & BMCR_RESET != 0 => self.phy_reset(),
            MII_BMCR => self.phy[0] = v & !BMCR_ANRESTART,
            1..=3 => {} // status and identifier: read-only
            _ => self.phy[regnum as usize] = v,
        }
    }

    /// EEMNGCTL: the configuration cycle completes with the reset.
    fn eemngctl_read(&mut self, _: &mut Ctx<'_>, i: usize) -> u32 {
        self.regs[i] | EEMNGCTL_CFG_DONE
    }

    fn swsm_read(&mut self, _: &mut Ctx<'_>, i: usize) -> u32 {
        let v = self.regs[i];
        self.regs[i] |= 1; // SMBI: reading takes the semaphore
        v
    }

    fn tctl_write(&mut self, ctx: &mut Ctx<'_>, i: usize, v: u32) {
        self.regs[i] = v;
        if v & TCTL_EN != 0 {
            ctx.kick();
        }
    }

    fn rctl_write(&mut self, ctx: &mut Ctx<'_>, i: usize, v: u32) {
        self.regs[i] = v;
        if self.wire_pending() {
            ctx.kick();
        }
    }

    /// TDT: the doorbell; the worker transmits up to the new tail.
    fn tdt_write(&mut self, ctx: &mut Ctx<'_>, i: usize, v: u32) {
        self.regs[i] = v & 0xffff;
        ctx.kick();
    }

    /// RDT: new descriptors; frames waiting on the wire may go in.
    fn rdt_write(&mut self, ctx: &mut Ctx<'_>, i: usize, v: u32) {
        self.regs[i] = v & 0xffff;
        if self.wire_pending() {
            ctx.kick();
        }
    }

    fn txdctl_write(&mut self, ctx: &mut Ctx<'_>, i: usize, v: u32) {
        let n = (i * 4 - reg::TXQ0 as usize) / 0x40;
        if v & DCTL_ENABLE != 0 && self.regs[i] & DCTL_ENABLE == 0 {
            self.tx_halted[n] = false;
            self.tx_frame[n].clear();
            ctx.kick();
        }
        self.regs[i] = v;
    }

    fn rxdctl_write(&mut self, _: &mut Ctx<'_>, i: usize, v: u32) {
        let n = (i * 4 - reg::RXQ0 as usize) / 0x40;
        if v & DCTL_ENABLE != 0 {
            self.rx_halted[n] = false;
        }
        self.regs[i] = v;
    }

    // --- interrupts ---

    fn msix_mode(&self) -> bool {
        self.r(reg::GPIE) & GPIE_MSIX_MODE != 0
    }

    fn icr_read(&mut self, ctx: &mut Ctx<'_>, i: usize) -> u32 {
        let mut v = self.regs[i];
        let asserted = v & self.r(reg::IMS) != 0;
        if asserted {
            v |= ICR_INT_ASSERTED;
        }
        if self.r(reg::GPIE) & GPIE_NSICR == 0 || asserted {
            self.regs[i] = 0;
            self.legacy_update(ctx);
        }
        v
    }

    fn icr_write(&mut self, ctx: &mut Ctx<'_>, i: usize, v: u32) {
        self.regs[i] &= !v;
        self.legacy_update(ctx);
    }

    fn ics_write(&mut self, ctx: &mut Ctx<'_>, _: usize, v: u32) {
        self.set_icr(ctx, v);
    }

    fn ims_write(&mut self, ctx: &mut Ctx<'_>, i: usize, v: u32) {
        let new = v & !self.regs[i];
        self.regs[i] |= v;
        if self.msix_mode() {
            if self.r(reg::ICR) & new != 0 {
                self.other_cause(ctx);
            }
        } else if self.r(reg::ICR) & new != 0 {
            self.legacy_assert(ctx);
        }
    }

    fn imc_write(&mut self, ctx: &mut Ctx<'_>, _: usize, v: u32) {
        self.regs[idx(reg::IMS)] &= !v;
        self.legacy_update(ctx);
    }

    /// EICR read: the causes, then cleared.
    fn eicr_read(&mut self, _: &mut Ctx<'_>, i: usize) -> u32 {
        std::mem::take(&mut self.regs[i])
    }

    /// EICR write: write 1 to clear.
    fn eicr_write(&mut self, _: &mut Ctx<'_>, i: usize, v: u32) {
        self.regs[i] &= !v;
    }

    fn eics_write(&mut self, ctx: &mut Ctx<'_>, _: usize, v: u32) {
        self.set_eicr(ctx, v);
    }

    fn eims_write(&mut self, ctx: &mut Ctx<'_>, i: usize, v: u32) {
        let new = v & !self.regs[i];
        self.regs[i] |= v;
        let fire = self.r(reg::EICR) & new;
        self.signal_eicr(ctx, fire);
    }

    fn eimc_write(&mut self, _: &mut Ctx<'_>, _: usize, v: u32) {
        self.regs[idx(reg::EIMS)] &= !v;
    }

    /// Sets causes in ICR: in MSI-X mode, the enabled ones reach the
    /// "other" vector of IVAR_MISC; otherwise MSI or INTx.
    fn set_icr(&mut self, ctx: &mut Ctx<'_>, bits: u32) {
        self.regs[idx(reg::ICR)] |= bits;
        if bits & self.r(reg::IMS) == 0 {
            return;
        }
        if self.msix_mode() {
            self.other_cause(ctx);
        } else {
            self.legacy_assert(ctx);
        }
    }

    fn other_cause(&mut self, ctx: &mut Ctx<'_>) {
        let entry = (self.r(reg::IVAR_MISC) >> 8) & 0xff;
        if entry & IVAR_VALID != 0 {
            self.set_eicr(ctx, 1 << (entry & 0x1f));
        }
    }

    /// Raises the legacy interrupt: MSI-X vector 0 (MSI-X enabled without
    /// GPIE's MSI-X mode), MSI, or the INTx pin.
    fn legacy_assert(&mut self, ctx: &mut Ctx<'_>) {
        match ctx.irq_mode() {
            IrqMode::Msix => {
                ctx.raise_msix(0);
            }
            IrqMode::Msi => {
                ctx.raise(0);
            }
            IrqMode::Intx => ctx.set_intx(true),
            _ => {}
        }
    }

    /// After ICR or IMS changed: INTx follows ICR & IMS.
    fn legacy_update(&mut self, ctx: &mut Ctx<'_>) {
        if ctx.irq_mode() == IrqMode::Intx && !self.msix_mode() {
            ctx.set_intx(self.r(reg::ICR) & self.r(reg::IMS) != 0);
        }
    }

    /// Sets causes in EICR and signals the enabled ones.
    fn set_eicr(&mut self, ctx: &mut Ctx<'_>, bits: u32) {
        self.regs[idx(reg::EICR)] |= bits;
        let fire = bits & self.r(reg::EIMS);
        self.signal_eicr(ctx, fire);
    }

    /// Sends the messages for the EICR bits `fire`: in MSI-X mode one per
    /// vector, then EIAC clears the causes and (with GPIE.EIAME) EIAM
    /// masks them; otherwise the legacy interrupt.
    fn signal_eicr(&mut self, ctx: &mut Ctx<'_>, fire: u32) {
        if fire == 0 {
            return;
        }
        if !self.msix_mode() || ctx.irq_mode() != IrqMode::Msix {
            self.legacy_assert(ctx);
            return;
        }
        for v in 0..u32::from(MSIX_VECTORS) {
            if fire & (1 << v) != 0 {
                ctx.raise_msix(v);
            }
        }
        self.regs[idx(reg::EICR)] &= !(fire & self.r(reg::EIAC));
        if self.r(reg::GPIE) & GPIE_EIAME != 0 {
            self.regs[idx(reg::EIMS)] &= !(fire & self.r(reg::EIAM));
        }
    }

    /// A queue's cause: through its IVAR entry to an EICR bit (MSI-X
    /// mode), or to ICR's TXDW/RXT0 (otherwise; its IVAR entry, if valid,
    /// also sets EICR).
    fn queue_interrupt(&mut self, ctx: &mut Ctx<'_>, n: usize, tx: bool) {
        let ivar = self.r(reg::IVAR0 + 4 * (n as u64 % 8));
        let byte = (n / 8) * 2 + usize::from(tx);
        let entry = (ivar >> (8 * byte)) & 0xff;
        if self.msix_mode() {
            if entry & IVAR_VALID != 0 {
                self.set_eicr(ctx, 1 << (entry & 0x1f));
            }
            return;
        }
        if entry & IVAR_VALID != 0 {
            self.regs[idx(reg::EICR)] |= 1 << (entry & 0x1f);
        }
        self.set_icr(ctx, if tx { ICR_TXDW } else { ICR_RXT0 });
    }

    // --- transmit ---

    fn txq(n: usize, off: u64) -> u64 {
        reg::TXQ0 + 0x40 * n as u64 + off
    }

    fn rxq(n: usize, off: u64) -> u64 {
        reg::RXQ0 + 0x40 * n as u64 + off
    }

    fn ring(&self, base: u64) -> (u64, u64) {
        let addr =
            u64::from(self.r(base + q::BAH)) << 32 | u64::from(self.r(base + q::BAL) & !0x7f);
        let len = u64::from(self.r(base + q::LEN) & 0xf_ff80) / DESC;
        (addr, len)
    }

    /// Transmits from every enabled queue until its head meets its tail
    /// or `budget` frames went; returns the frames left to the budget.
    fn transmit(&mut self, ctx: &mut Ctx<'_>, mut budget: usize) -> usize {
        if self.r(reg::TCTL) & TCTL_EN == 0 {
            return budget;
        }
        for n in 0..QUEUES {
            let base = Self::txq(n, 0);
            if self.r(base + q::DCTL) & DCTL_ENABLE == 0 || self.tx_halted[n] {
                continue;
            }
            let (ring, len) = self.ring(base);
            if len == 0 {
                continue;
            }
            let mut wrote_back = false;
            while budget > 0 && self.r(base + q::H) != self.r(base + q::T) {
                let head = u64::from(self.r(base + q::H)) % len;
                match self.process_tx_descriptor(ctx, n, ring + head * DESC) {
                    Ok((sent, rs)) => {
                        self.set(base + q::H, ((head + 1) % len) as u32);
                        budget -= usize::from(sent);
                        wrote_back |= rs;
                    }
                    Err(()) => {
                        tracing::debug!(queue = n, "igb: transmit DMA refused, queue halted");
                        self.tx_halted[n] = true;
                        break;
                    }
                }
            }
            if wrote_back {
                self.write_back_tx_head(ctx, n);
                self.queue_interrupt(ctx, n, true);
            }
        }
        budget
    }

    /// Fetches one transmit descriptor, gathers its buffer, sends the
    /// frame at EOP and writes DD back if RS asks; returns (a frame was
    /// sent, status was written back).
    fn process_tx_descriptor(
        &mut self,
        ctx: &mut Ctx<'_>,
        n: usize,
        at: u64,
    ) -> Result<(bool, bool), ()> {
        let mut d = [0u8; DESC as usize];
        ctx.dma_read(at, &mut d).map_err(|_| ())?;
        let addr = u64::from_le_bytes(d[0..8].try_into().expect("8 bytes"));
        let cmd = u32::from_le_bytes(d[8..12].try_into().expect("4 bytes"));
        let advanced = cmd & TXD_DEXT != 0;
        let (data_len, is_data) = if advanced {
            ((cmd & 0xffff) as usize, (cmd >> 20) & 0xf == TXD_DTYP_DATA)
        } else {
            ((cmd & 0xffff) as usize, true)
        };
        let mut sent = false;
        if is_data {
            let mut buf = vec![0u8; data_len];
            ctx.dma_read(addr, &mut buf).map_err(|_| ())?;
            if self.tx_frame[n].len() + buf.len() > MAX_TX_FRAME {
                tracing::debug!(queue = n, "igb: a frame without EOP grew too long, dropped");
                self.tx_frame[n].clear();
            }
            self.tx_frame[n].extend_from_slice(&buf);
            if cmd & TXD_EOP != 0 {
                let frame = std::mem::take(&mut self.tx_frame[n]);
                self.send_frame(ctx, frame, cmd & TXD_IFCS != 0);
                sent = true;
            }
        }
        let rs = cmd & TXD_RS != 0;
        if rs {
            // DD: bit 0 of the status nibble (legacy) or of STA (advanced).
            let status = u32::from_le_bytes(d[12..16].try_into().expect("4 bytes"));
            let wb = if advanced { 1 } else { (status & !0xf) | 1 };
            ctx.dma_write(at + 12, &wb.to_le_bytes()).map_err(|_| ())?;
        }
        Ok((sent, rs))
    }

    /// TDWBAL/H: the head written to memory, if enabled.
    fn write_back_tx_head(&mut self, ctx: &mut Ctx<'_>, n: usize) {
        let base = Self::txq(n, 0);
        let lo = self.r(base + q::WBAL);
        if lo & 1 != 0 {
            let at = u64::from(self.r(base + q::WBAH)) << 32 | u64::from(lo & !3);
            let _ = ctx.dma_write(at, &self.r(base + q::H).to_le_bytes());
        }
    }

    /// Sends `frame` (padded, with its FCS): looped back to this port's
    /// receiver (MAC or PHY loopback), onto the wire, or dropped without
    /// a link.
    fn send_frame(&mut self, ctx: &mut Ctx<'_>, mut frame: Vec<u8>, ifcs: bool) {
        if frame.is_empty() {
            return;
        }
        if ifcs {
            if frame.len() < MIN_FRAME && self.r(reg::TCTL) & TCTL_PSP != 0 {
                frame.resize(MIN_FRAME, 0);
            }
            let fcs = crc32(&frame);
            frame.extend_from_slice(&fcs.to_le_bytes());
        }
        if !self.link {
            return;
        }
        let len = frame.len();
        self.frames_tx += 1;
        self.count(stat::GPTC, 1);
        self.count(stat::TPT, 1);
        self.count64(stat::GOTCL, len as u64);
        self.count64(stat::TOTL, len as u64);
        self.count(stat::PTC64 + 4 * size_bucket(len), 1);
        if frame[0] == 0xff && frame[..6].iter().all(|&b| b == 0xff) {
            self.count(stat::BPTC, 1);
        } else if !is_unicast(&frame) {
            self.count(stat::MPTC, 1);
        }
        let loopback = self.r(reg::RCTL) & RCTL_LBM == RCTL_LBM_MAC || self.phy_loopback();
        if loopback {
            if self.receive_frame(ctx, &frame) == Rx::NoDescriptors {
                self.count_missed(0, 1);
            }
        } else if let Some((wire, end)) = &self.port {
            wire.send(*end, frame);
        }
    }

    // --- receive ---

    fn wire_pending(&self) -> bool {
        self.port.as_ref().is_some_and(|(w, end)| w.pending(*end))
    }

    /// Frames that found no room: MPC, RNBC and the queue's RQDPC.
    fn count_missed(&mut self, n: usize, frames: u32) {
        self.count(stat::MPC, frames);
        self.count(stat::RNBC, frames);
        self.count(Self::rxq(n, q::RQDPC), frames);
    }

    /// Takes frames in from the wire until `budget` went or one finds no
    /// descriptor (it waits for the next RDT write); returns the budget
    /// left.
    fn receive_from_wire(&mut self, ctx: &mut Ctx<'_>, mut budget: usize) -> usize {
        let Some((wire, end)) = self.port.clone() else {
            return budget;
        };
        let missed = wire.take_missed(end);
        if missed > 0 {
            self.count_missed(0, missed);
        }
        while budget > 0 {
            let Some(frame) = wire.take(end) else { break };
            if self.receive_frame(ctx, &frame) == Rx::NoDescriptors {
                wire.put_back(end, frame);
                break;
            }
            budget -= 1;
        }
        budget
    }

    /// Whether the receive filters take `frame`: broadcast with BAM,
    /// multicast by MPE or the MTA, unicast by UPE or a valid RAL/RAH; then
    /// the VLAN filter with RCTL.VFE.
    fn accept(&self, frame: &[u8]) -> bool {
        let rctl = self.r(reg::RCTL);
        let dst = &frame[..6];
        let addr_ok = if dst.iter().all(|&b| b == 0xff) {
            rctl & RCTL_BAM != 0 || rctl & RCTL_MPE != 0
        } else if !is_unicast(dst) {
            rctl & RCTL_MPE != 0 || self.mta_match(dst)
        } else {
            rctl & RCTL_UPE != 0 || self.ra_match(dst)
        };
        if !addr_ok {
            return false;
        }
        let vet = self.r(0x0038) & 0xffff;
        let tpid = u32::from(u16::from_be_bytes([frame[12], frame[13]]));
        if rctl & RCTL_VFE != 0 && tpid == if vet == 0 { 0x8100 } else { vet } {
            let vid = u32::from(u16::from_be_bytes([frame[14], frame[15]]) & 0xfff);
            return self.r(reg::VFTA + 4 * u64::from(vid / 32)) & (1 << (vid % 32)) != 0;
        }
        true
    }

    fn ra_match(&self, dst: &[u8]) -> bool {
        (0..24u64).any(|e| {
            let at = if e < 16 {
                reg::RAL0 + 8 * e
            } else {
                reg::RAL16 + 8 * (e - 16)
            };
            let (lo, hi) = (self.r(at), self.r(at + 4));
            hi & (1 << 31) != 0
                && lo.to_le_bytes() == dst[..4]
                && (hi as u16).to_le_bytes() == dst[4..6]
        })
    }

    fn mta_match(&self, dst: &[u8]) -> bool {
        let (a4, a5) = (u32::from(dst[4]), u32::from(dst[5]));
        let hash = match (self.r(reg::RCTL) >> 12) & 3 {
            0 => (a4 >> 4) | (a5 << 4),
            1 => (a4 >> 3) | (a5 << 5),
            2 => (a4 >> 2) | (a5 << 6),
            _ => a4 | (a5 << 8),
        } & 0xfff;
        self.r(reg::MTA + 4 * u64::from(hash >> 5)) & (1 << (hash & 31)) != 0
    }

    /// The receive queue by RSS (MRQC's RSS modes, Toeplitz over what MRQC
    /// selects, RETA); queue 0 otherwise. Returns (queue, hash, RSS type,
    /// packet type).
    fn select_queue(&self, frame: &[u8]) -> (usize, u32, u32, u32) {
        let mrqc = self.r(reg::MRQC);
        let mut l2 = 14;
        let mut ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        if ethertype == 0x8100 && frame.len() >= 18 {
            ethertype = u16::from_be_bytes([frame[16], frame[17]]);
            l2 = 18;
        }
        let l3 = &frame[l2.min(frame.len())..];
        let mut ptype = 0;
        let mut input = Vec::new();
        let mut rss_type = 0;
        if ethertype == 0x0800 && l3.len() >= 20 {
            ptype = 0x1;
            let ihl = usize::from(l3[0] & 0xf) * 4;
            let proto = l3[9];
            let frag = u16::from_be_bytes([l3[6], l3[7]]) & 0x3fff != 0;
            let l4 = l3.get(ihl..).unwrap_or(&[]);
            ptype |= match proto {
                6 => 0x10,
                17 => 0x20,
                _ => 0,
            };
            let tcp = proto == 6 && mrqc & (1 << 16) != 0;
            let udp = proto == 17 && mrqc & (1 << 22) != 0;
            if (tcp || udp) && !frag && l4.len() >= 4 {
                input.extend_from_slice(&l3[12..20]);
                input.extend_from_slice(&l4[..4]);
                rss_type = if tcp { 1 } else { 7 };
            } else if mrqc & (1 << 17) != 0 {
                input.extend_from_slice(&l3[12..20]);
                rss_type = 2;
            }
        } else if ethertype == 0x86dd && l3.len() >= 40 {
            ptype = 0x4;
            let proto = l3[6];
            let l4 = &l3[40..];
            ptype |= match proto {
                6 => 0x10,
                17 => 0x20,
                _ => 0,
            };
            let tcp = proto == 6 && mrqc & (1 << 21) != 0;
            let udp = proto == 17 && mrqc & (1 << 23) != 0;
            if (tcp || udp) && l4.len() >= 4 {
                input.extend_from_slice(&l3[8..40]);
                input.extend_from_slice(&l4[..4]);
                rss_type = if tcp { 3 } else { 8 };
            } else if mrqc & (1 << 20) != 0 {
                input.extend_from_slice(&l3[8..40]);
                rss_type = 5;
            }
        }
        let rss = matches!(mrqc & 7, 1 | 2 | 5);
        if !rss || input.is_empty() {
            return (0, 0, 0, ptype);
        }
        let mut key = [0u8; 40];
        for (i, k) in key.chunks_mut(4).enumerate() {
            k.copy_from_slice(&self.r(reg::RSSRK + 4 * i as u64).to_le_bytes());
        }
        let hash = toeplitz(&key, &input);
        let entry = (hash & 0x7f) as u64;
        let reta = self.r(reg::RETA + (entry & !3));
        let queue = ((reta >> (8 * (entry & 3))) & 0xf) as usize;
        (queue, hash, rss_type, ptype)
    }

    /// Receives `frame` (with its FCS): the filters, the queue, then its
    /// descriptors, buffers and write-backs, the statistics and the
    /// queue's interrupt. A frame that finds no room is dropped and
    /// counted.
    fn receive_frame(&mut self, ctx: &mut Ctx<'_>, frame: &[u8]) -> Rx {
        let rctl = self.r(reg::RCTL);
        if rctl & RCTL_EN == 0 || frame.len() < 14 + FCS {
            return Rx::Dropped;
        }
        let len = frame.len();
        if len < MIN_FRAME + FCS {
            self.count(stat::RUC, 1);
            return Rx::Dropped;
        }
        let vlan = u16::from_be_bytes([frame[12], frame[13]]) == 0x8100;
        let max = if rctl & RCTL_LPE != 0 {
            (self.r(RLPML) & 0x3fff) as usize
        } else {
            MAX_FRAME + if vlan { 4 } else { 0 }
        };
        if len > max.max(MIN_FRAME + FCS) {
            self.count(stat::ROC, 1);
            return Rx::Dropped;
        }
        if !self.accept(frame) {
            return Rx::Dropped;
        }
        let (n, hash, rss_type, ptype) = self.select_queue(frame);
        let base = Self::rxq(n, 0);
        let data = if rctl & RCTL_SECRC != 0 {
            &frame[..len - FCS]
        } else {
            frame
        };
        if self.r(base + q::DCTL) & DCTL_ENABLE == 0 || self.rx_halted[n] {
            self.count_missed(n, 1);
            return Rx::Dropped;
        }
        match self.write_rx(ctx, n, data, hash, rss_type, ptype) {
            Rx::Delivered => {}
            other => return other,
        }
        self.frames_rx += 1;
        self.count(stat::GPRC, 1);
        self.count(stat::TPR, 1);
        self.count64(stat::GORCL, len as u64);
        self.count64(stat::TORL, len as u64);
        self.count(stat::PRC64 + 4 * size_bucket(len), 1);
        if frame[..6].iter().all(|&b| b == 0xff) {
            self.count(stat::BPRC, 1);
        } else if !is_unicast(frame) {
            self.count(stat::MPRC, 1);
        }
        self.queue_interrupt(ctx, n, false);
        Rx::Delivered
    }

    /// The buffer size of receive queue `n`: SRRCTL.BSIZEPACKET (KiB), or
    /// RCTL.BSIZE (with BSEX) when that is 0.
    fn rx_buffer_size(&self, n: usize) -> usize {
        let kib = (self.r(Self::rxq(n, q::SRRCTL)) & 0x7f) as usize;
        if kib != 0 {
            return kib * 1024;
        }
        let rctl = self.r(reg::RCTL);
        let size = 2048 >> ((rctl >> 16) & 3);
        if rctl & RCTL_BSEX != 0 {
            size * 16
        } else {
            size
        }
    }

    /// Writes `data` into queue `n`'s buffers, one descriptor each, and
    /// writes each descriptor back. Without enough descriptors nothing is
    /// consumed; if the IOMMU refuses, the frame is dropped and the queue
    /// halted.
    fn write_rx(
        &mut self,
        ctx: &mut Ctx<'_>,
        n: usize,
        data: &[u8],
        hash: u32,
        rss_type: u32,
        ptype: u32,
    ) -> Rx {
        let base = Self::rxq(n, 0);
        let (ring, len) = self.ring(base);
        if len == 0 {
            return Rx::NoDescriptors;
        }
        let bsize = self.rx_buffer_size(n);
        let need = data.len().div_ceil(bsize).max(1) as u64;
        let head = u64::from(self.r(base + q::H)) % len;
        let tail = u64::from(self.r(base + q::T)) % len;
        let avail = (tail + len - head) % len;
        if avail < need {
            return Rx::NoDescriptors;
        }
        let advanced = (self.r(base + q::SRRCTL) >> 25) & 7 != 0;
        for (k, chunk) in data.chunks(bsize).enumerate() {
            let at = ring + ((head + k as u64) % len) * DESC;
            let eop = k as u64 == need - 1;
            if !self.write_rx_descriptor(ctx, at, chunk, eop, advanced, hash, rss_type, ptype) {
                tracing::debug!(queue = n, "igb: receive DMA refused, queue halted");
                self.rx_halted[n] = true;
                self.count_missed(n, 1);
                return Rx::Dropped;
            }
        }
        self.set(base + q::H, ((head + need) % len) as u32);
        Rx::Delivered
    }

    /// One receive descriptor: fetch its buffer address, write the data,
    /// write back status (legacy or advanced layout).
    #[allow(clippy::too_many_arguments)]
    fn write_rx_descriptor(
        &mut self,
        ctx: &mut Ctx<'_>,
        at: u64,
        chunk: &[u8],
        eop: bool,
        advanced: bool,
        hash: u32,
        rss_type: u32,
        ptype: u32,
    ) -> bool {
        let mut d = [0u8; 8];
        if ctx.dma_read(at, &mut d).is_err() {
            return false;
        }
        let buf = u64::from_le_bytes(d);
        if ctx.dma_write(buf, chunk).is_err() {
            return false;
        }
        let status = RXD_DD | if eop { RXD_EOP } else { 0 };
        let mut wb = [0u8; DESC as usize];
        if advanced {
            let pkt_info = rss_type | (ptype << 4);
            wb[0..4].copy_from_slice(&pkt_info.to_le_bytes());
            wb[4..8].copy_from_slice(&hash.to_le_bytes());
            wb[8..12].copy_from_slice(&status.to_le_bytes());
            wb[12..14].copy_from_slice(&(chunk.len() as u16).to_le_bytes());
        } else {
            wb[0..8].copy_from_slice(&d);
            wb[8..10].copy_from_slice(&(chunk.len() as u16).to_le_bytes());
            wb[12] = status as u8;
        }
        ctx.dma_write(at, &wb).is_ok()
    }
}

impl DeviceModel for Igb {
    fn layout(&self) -> Layout {
        Layout::new(VENDOR, DEVICE)
            .class(0x02_00_00) // network, Ethernet
            .revision(0x01)
            .intx()
            .region(
                0,
                RegionKind::Registers {
                    size: BAR0_SIZE,
                    mmap: true,
                    bits64: false,
                },
            )
            .region(
                MSIX_BAR,
                RegionKind::Registers {
                    size: BAR3_SIZE,
                    mmap: true,
                    bits64: false,
                },
            )
            .msi(1)
            .msix(MSIX_VECTORS, MSIX_BAR as u8, 0, 0x2000)
    }

    fn read(&mut self, ctx: &mut Ctx<'_>, region: u32, offset: u64, width: Width) -> u64 {
        self.plug_in(ctx);
        if region != 0 {
            return 0;
        }
        if width == Width::B8 {
            let lo = self.read(ctx, region, offset, Width::B4);
            let hi = self.read(ctx, region, offset + 4, Width::B4);
            return lo | hi << 32;
        }
        let i = idx(canonical(offset & !3));
        let v = match ops().read[i] {
            Some(f) => f(self, ctx, i),
            None => self.plain_read(ctx, i),
        };
        u64::from(v >> (8 * (offset & 3)))
    }

    fn write(&mut self, ctx: &mut Ctx<'_>, region: u32, offset: u64, width: Width, value: u64) {
        self.plug_in(ctx);
        if region != 0 {
            return;
        }
        if width == Width::B8 {
            self.write(ctx, region, offset, Width::B4, value & 0xffff_ffff);
            self.write(ctx, region, offset + 4, Width::B4, value >> 32);
            return;
        }
        let i = idx(canonical(offset & !3));
        let shift = 8 * (offset & 3);
        let mask = (width.mask() << shift) as u32;
        let bytes = (value << shift) as u32 & mask;
        // A narrow write merges into the register, except where a write
        // names bits to clear (ICR, EICR): there it carries its bytes only.
        let v = if i == idx(reg::ICR) || i == idx(reg::EICR) {
            bytes
        } else {
            (self.regs[i] & !mask) | bytes
        };
        match ops().write[i] {
            Some(f) => f(self, ctx, i, v),
            None => self.plain_write(ctx, i, v),
        }
    }

    fn reset(&mut self) {
        self.phy_reset();
        self.mac_reset();
        self.frames_tx = 0;
        self.frames_rx = 0;
    }

    fn work(&mut self, ctx: &mut Ctx<'_>) {
        self.plug_in(ctx);
        let left = self.transmit(ctx, BUDGET);
        if self.receive_from_wire(ctx, left) == 0 {
            ctx.kick();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nvm_checksum_word_makes_the_sum() {
        let nvm = nvm_image(DEFAULT_MAC);
        let sum = nvm.iter().fold(0u16, |s, w| s.wrapping_add(*w));
        assert_eq!(sum, NVM_SUM);
        assert_eq!(nvm[0], 0x5452);
        assert_eq!(nvm[2], 0x5634);
    }

    #[test]
    fn crc32_is_the_ethernet_fcs() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        // The table gives what the bit at a time gives, on every byte.
        let bitwise = |data: &[u8]| {
            let mut crc = !0u32;
            for &b in data {
                crc ^= u32::from(b);
                for _ in 0..8 {
                    crc = (crc >> 1) ^ (0xedb8_8320 & (crc & 1).wrapping_neg());
                }
            }
            !crc
        };
        let data: Vec<u8> = (0..1030u32).map(|i| (i * 7 + i / 256) as u8).collect();
        assert_eq!(crc32(&data), bitwise(&data));
        assert_eq!(crc32(&[]), bitwise(&[]));
    }

    #[test]
    fn toeplitz_matches_the_rss_verification_suite() {
        // Microsoft's RSS verification key and its first IPv4 example.
        let key: [u8; 40] = [
            0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3,
            0x8f, 0xb0, 0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3,
            0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
        ];
        let input = [66, 9, 149, 187, 161, 142, 100, 80, 0x0a, 0xea, 0x06, 0xe6];
        assert_eq!(toeplitz(&key, &input[..8]), 0x323e_8fc2);
        assert_eq!(toeplitz(&key, &input), 0x51cc_c178);
    }

    #[test]
    fn old_queue_offsets_alias_the_new_ones() {
        assert_eq!(canonical(0x2818), 0xc018);
        assert_eq!(canonical(0x2918), 0xc058);
        assert_eq!(canonical(0x3818 + 0x300), 0xe0d8);
        assert_eq!(canonical(0x2c00), 0x2c00);
    }
}
