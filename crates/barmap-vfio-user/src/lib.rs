//! # barmap-vfio-user
//!
//! The vfio-user protocol as QEMU's `docs/interop/vfio-user.rst` defines it
//! (the version QEMU 10.1 and later, libvfio-user and rust-vmm's
//! `vfio_user` crate speak): a 16-byte header, the command's payload, and
//! file descriptors as `SCM_RIGHTS` ancillary data on a message's first
//! byte. Everything is in the host's byte order.
//!
//! This crate is the one place the protocol's layouts live, for both of
//! barmap's sides: the device server (`barmap-server`, `barmap serve`) and
//! the client (`barmap-client`, `barmap run --device vfio-user:PATH`).
//! It holds:
//!
//! - the command numbers and the header's flag bits;
//! - the VFIO constants the messages carry (region and interrupt indexes,
//!   `VFIO_*_FLAG_*` bits);
//! - every fixed message layout both sides use ([`DeviceInfo`],
//!   [`RegionInfo`] and its sparse-mmap capability, [`IrqInfo`],
//!   [`IrqSet`], [`RegionAccess`], [`DmaMap`], [`DmaUnmap`], [`DmaAccess`],
//!   [`WriteMultiEntry`], [`Version`]), each with `encode` and a `decode`
//!   that refuses a payload too short for it;
//! - the capability JSON of `VFIO_USER_VERSION` ([`Capabilities`]);
//! - framing: [`send`]/[`send_parts`] and [`recv`], with the size limits
//!   ([`MAX_MESSAGE`], [`MAX_MSG_FDS`]) and the error bit
//!   ([`error_header`], [`Header::is_error`]).
//!
//! What a command does is the server's or the client's business.

#![cfg(target_os = "linux")]
#![warn(missing_docs)]

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// `VFIO_USER_VERSION`: the first message, proposing a version and
/// capabilities.
pub const VERSION: u16 = 1;
/// `VFIO_USER_DMA_MAP`: client memory the device may reach.
pub const DMA_MAP: u16 = 2;
/// `VFIO_USER_DMA_UNMAP`.
pub const DMA_UNMAP: u16 = 3;
/// `VFIO_USER_DEVICE_GET_INFO`.
pub const DEVICE_GET_INFO: u16 = 4;
/// `VFIO_USER_DEVICE_GET_REGION_INFO`.
pub const DEVICE_GET_REGION_INFO: u16 = 5;
/// `VFIO_USER_DEVICE_GET_REGION_IO_FDS`.
pub const DEVICE_GET_REGION_IO_FDS: u16 = 6;
/// `VFIO_USER_DEVICE_GET_IRQ_INFO`.
pub const DEVICE_GET_IRQ_INFO: u16 = 7;
/// `VFIO_USER_DEVICE_SET_IRQS`.
pub const DEVICE_SET_IRQS: u16 = 8;
/// `VFIO_USER_REGION_READ`.
pub const REGION_READ: u16 = 9;
/// `VFIO_USER_REGION_WRITE`.
pub const REGION_WRITE: u16 = 10;
/// `VFIO_USER_DMA_READ` (server to client).
pub const DMA_READ: u16 = 11;
/// `VFIO_USER_DMA_WRITE` (server to client).
pub const DMA_WRITE: u16 = 12;
/// `VFIO_USER_DEVICE_RESET`.
pub const DEVICE_RESET: u16 = 13;
/// `VFIO_USER_REGION_WRITE_MULTI`: coalesced writes of at most 8 bytes.
pub const REGION_WRITE_MULTI: u16 = 15;

/// Header flags: the type bits' value of a command.
pub const FLAG_COMMAND: u32 = 0x0;
/// Header flags: the type bits' value of a reply.
pub const FLAG_REPLY: u32 = 0x1;
/// Header flags: the type bits.
pub const FLAG_TYPE_MASK: u32 = 0xf;
/// Header flags: the sender wants no reply.
pub const FLAG_NO_REPLY: u32 = 0x10;
/// Header flags: the reply reports an error (the header's `error`).
pub const FLAG_ERROR: u32 = 0x20;

/// Bytes of the header (`struct vfio_user_header`).
pub const HEADER_SIZE: usize = 16;
/// The largest `count` of one region or DMA read or write barmap accepts
/// and announces (`max_data_xfer_size`; the protocol's default).
pub const MAX_DATA_XFER: usize = 1 << 20;
/// The most file descriptors one message may carry (`max_msg_fds`;
/// libvfio-user's `SERVER_MAX_FDS` is the same).
pub const MAX_MSG_FDS: usize = 8;
/// The largest message sent or accepted: a maximal transfer and its
/// headers (every other message is far smaller).
pub const MAX_MESSAGE: usize = MAX_DATA_XFER + 64;

/// The PCI regions (`VFIO_PCI_NUM_REGIONS`): BARs 0 to 5, ROM, config, VGA.
pub const NUM_REGIONS: u32 = 9;
/// Config space's region index (`VFIO_PCI_CONFIG_REGION_INDEX`).
pub const CONFIG_REGION: u32 = 7;
/// Interrupt indexes (`VFIO_PCI_NUM_IRQS`): INTx, MSI, MSI-X, ERR, REQ.
pub const NUM_IRQS: u32 = 5;
/// `VFIO_PCI_INTX_IRQ_INDEX`.
pub const IRQ_INTX: u32 = 0;
/// `VFIO_PCI_MSI_IRQ_INDEX`.
pub const IRQ_MSI: u32 = 1;
/// `VFIO_PCI_MSIX_IRQ_INDEX`.
pub const IRQ_MSIX: u32 = 2;
/// `VFIO_PCI_ERR_IRQ_INDEX`.
pub const IRQ_ERR: u32 = 3;
/// `VFIO_PCI_REQ_IRQ_INDEX`: the device asks to be released.
pub const IRQ_REQ: u32 = 4;

/// `VFIO_DEVICE_FLAGS_RESET`.
pub const DEVICE_FLAGS_RESET: u32 = 1 << 0;
/// `VFIO_DEVICE_FLAGS_PCI`.
pub const DEVICE_FLAGS_PCI: u32 = 1 << 1;
/// `VFIO_REGION_INFO_FLAG_READ`.
pub const REGION_FLAG_READ: u32 = 1 << 0;
/// `VFIO_REGION_INFO_FLAG_WRITE`.
pub const REGION_FLAG_WRITE: u32 = 1 << 1;
/// `VFIO_REGION_INFO_FLAG_MMAP`.
pub const REGION_FLAG_MMAP: u32 = 1 << 2;
/// `VFIO_REGION_INFO_FLAG_CAPS`.
pub const REGION_FLAG_CAPS: u32 = 1 << 3;
/// `VFIO_REGION_INFO_CAP_SPARSE_MMAP`.
pub const CAP_SPARSE_MMAP: u16 = 1;
/// `VFIO_IRQ_INFO_EVENTFD`.
pub const IRQ_INFO_EVENTFD: u32 = 1 << 0;
/// `VFIO_IRQ_INFO_MASKABLE`.
pub const IRQ_INFO_MASKABLE: u32 = 1 << 1;
/// `VFIO_IRQ_INFO_AUTOMASKED`.
pub const IRQ_INFO_AUTOMASKED: u32 = 1 << 2;
/// `VFIO_IRQ_INFO_NORESIZE`.
pub const IRQ_INFO_NORESIZE: u32 = 1 << 3;
/// `VFIO_IRQ_SET_DATA_NONE`.
pub const IRQ_SET_DATA_NONE: u32 = 1 << 0;
/// `VFIO_IRQ_SET_DATA_BOOL`.
pub const IRQ_SET_DATA_BOOL: u32 = 1 << 1;
/// `VFIO_IRQ_SET_DATA_EVENTFD`.
pub const IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
/// `VFIO_IRQ_SET_DATA_TYPE_MASK`.
pub const IRQ_SET_DATA_TYPE_MASK: u32 = 0x7;
/// `VFIO_IRQ_SET_ACTION_MASK`.
pub const IRQ_SET_ACTION_MASK: u32 = 1 << 3;
/// `VFIO_IRQ_SET_ACTION_UNMASK`.
pub const IRQ_SET_ACTION_UNMASK: u32 = 1 << 4;
/// `VFIO_IRQ_SET_ACTION_TRIGGER`.
pub const IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;
/// `VFIO_IRQ_SET_ACTION_TYPE_MASK`.
pub const IRQ_SET_ACTION_TYPE_MASK: u32 = 0x38;
/// `VFIO_DMA_MAP_FLAG_READ`.
pub const DMA_FLAG_READ: u32 = 1 << 0;
/// `VFIO_DMA_MAP_FLAG_WRITE`.
pub const DMA_FLAG_WRITE: u32 = 1 << 1;
/// `VFIO_DMA_UNMAP_FLAG_ALL`: every mapping (address and size 0).
pub const DMA_UNMAP_FLAG_ALL: u32 = 1 << 1;

/// A message header (`struct vfio_user_header`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// Message ID, echoed by the reply.
    pub id: u16,
    /// Command.
    pub command: u16,
    /// Size of the whole message, header included (set by [`send`]).
    pub size: u32,
    /// Type, no-reply and error bits.
    pub flags: u32,
    /// errno of an error reply.
    pub error: u32,
}

impl Header {
    /// A command with id `id`.
    pub fn command(id: u16, command: u16) -> Header {
        Header {
            id,
            command,
            flags: FLAG_COMMAND,
            ..Header::default()
        }
    }

    /// Decodes the 16 header bytes.
    pub fn decode(b: &[u8; HEADER_SIZE]) -> Header {
        Header {
            id: u16::from_ne_bytes([b[0], b[1]]),
            command: u16::from_ne_bytes([b[2], b[3]]),
            size: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
            flags: u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
            error: u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
        }
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..2].copy_from_slice(&self.id.to_ne_bytes());
        b[2..4].copy_from_slice(&self.command.to_ne_bytes());
        b[4..8].copy_from_slice(&self.size.to_ne_bytes());
        b[8..12].copy_from_slice(&self.flags.to_ne_bytes());
        b[12..16].copy_from_slice(&self.error.to_ne_bytes());
        b
    }

    /// Whether this is a reply.
    pub fn is_reply(&self) -> bool {
        self.flags & FLAG_TYPE_MASK == FLAG_REPLY
    }

    /// Whether the sender asked for no reply.
    pub fn no_reply(&self) -> bool {
        self.flags & FLAG_NO_REPLY != 0
    }

    /// Whether this reply reports an error (then [`Header::error`] is its
    /// errno).
    pub fn is_error(&self) -> bool {
        self.flags & FLAG_ERROR != 0
    }
}

/// The reply to `to` (its payload is the caller's).
pub fn reply_header(to: &Header) -> Header {
    Header {
        id: to.id,
        command: to.command,
        size: 0,
        flags: FLAG_REPLY,
        error: 0,
    }
}

/// An error reply to `to`: header only, errno `errno`.
pub fn error_header(to: &Header, errno: i32) -> Header {
    Header {
        flags: FLAG_REPLY | FLAG_ERROR,
        error: errno as u32,
        ..reply_header(to)
    }
}

/// One received message: header, payload and the fds that came with it.
#[derive(Debug)]
pub struct Message {
    /// The header.
    pub header: Header,
    /// The bytes after the header.
    pub payload: Vec<u8>,
    /// File descriptors passed with it (closed when dropped).
    pub fds: Vec<OwnedFd>,
}

/// Fixed fields read out of a payload.
pub trait Fields {
    /// The `u16` at `at`, if the payload has it.
    fn u16_at(&self, at: usize) -> Option<u16>;
    /// The `u32` at `at`, if the payload has it.
    fn u32_at(&self, at: usize) -> Option<u32>;
    /// The `u64` at `at`, if the payload has it.
    fn u64_at(&self, at: usize) -> Option<u64>;
}

impl Fields for [u8] {
    fn u16_at(&self, at: usize) -> Option<u16> {
        self.get(at..at.checked_add(2)?)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
    }
    fn u32_at(&self, at: usize) -> Option<u32> {
        self.get(at..at.checked_add(4)?)
            .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
    }
    fn u64_at(&self, at: usize) -> Option<u64> {
        self.get(at..at.checked_add(8)?)
            .map(|b| u64::from_ne_bytes(b.try_into().expect("8 bytes")))
    }
}

/// Appends `v` in the host's byte order.
pub fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_ne_bytes());
}

/// Appends `v` in the host's byte order.
pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_ne_bytes());
}

/// Appends `v` in the host's byte order.
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_ne_bytes());
}

// ---------------------------------------------------------------------
// Message layouts
// ---------------------------------------------------------------------

/// `VFIO_USER_VERSION`'s payload: major, minor, then the capabilities as
/// a NUL-terminated JSON string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Version {
    /// Major version (0 today).
    pub major: u16,
    /// Minor version.
    pub minor: u16,
    /// The capability object.
    pub caps: Capabilities,
}

impl Version {
    /// Bytes before the JSON.
    pub const SIZE: usize = 4;

    /// Encodes the payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::new();
        put_u16(&mut p, self.major);
        put_u16(&mut p, self.minor);
        p.extend_from_slice(self.caps.to_json().as_bytes());
        p.push(0);
        p
    }

    /// Decodes a payload: `None` when shorter than the version numbers.
    /// Capabilities that are missing, not JSON or not of the documented
    /// type are left unset (the protocol's defaults apply).
    pub fn decode(p: &[u8]) -> Option<Version> {
        let major = p.u16_at(0)?;
        let minor = p.u16_at(2)?;
        let text = String::from_utf8_lossy(&p[4..]);
        Some(Version {
            major,
            minor,
            caps: Capabilities::parse(text.trim_end_matches('\0')),
        })
    }
}

/// The `capabilities` object of `VFIO_USER_VERSION`. Unset fields are
/// left out of the JSON and take the protocol's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// `max_msg_fds`: descriptors one message may carry (default 1).
    pub max_msg_fds: Option<u64>,
    /// `max_data_xfer_size`: bytes of one region or DMA access (default
    /// 1 MiB).
    pub max_data_xfer_size: Option<u64>,
    /// `pgsizes` (in `migration`-less servers at the top level, as QEMU
    /// and libvfio-user accept): supported page sizes.
    pub pgsizes: Option<u64>,
    /// `max_dma_maps`: DMA windows at most.
    pub max_dma_maps: Option<u64>,
}

impl Capabilities {
    /// The JSON text: `{"capabilities":{...}}`.
    pub fn to_json(&self) -> String {
        let mut c = serde_json::Map::new();
        let fields = [
            ("max_msg_fds", self.max_msg_fds),
            ("max_data_xfer_size", self.max_data_xfer_size),
            ("pgsizes", self.pgsizes),
            ("max_dma_maps", self.max_dma_maps),
        ];
        for (k, v) in fields {
            if let Some(v) = v {
                c.insert(k.into(), v.into());
            }
        }
        serde_json::json!({ "capabilities": c }).to_string()
    }

    /// Reads the capabilities out of `text` (anything unreadable is
    /// unset).
    pub fn parse(text: &str) -> Capabilities {
        let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
        let c = &v["capabilities"];
        Capabilities {
            max_msg_fds: c["max_msg_fds"].as_u64(),
            max_data_xfer_size: c["max_data_xfer_size"].as_u64(),
            pgsizes: c["pgsizes"].as_u64(),
            max_dma_maps: c["max_dma_maps"].as_u64(),
        }
    }
}

/// `struct vfio_device_info` (`VFIO_USER_DEVICE_GET_INFO`, both ways).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceInfo {
    /// Bytes of the structure the sender has room for.
    pub argsz: u32,
    /// `VFIO_DEVICE_FLAGS_*`.
    pub flags: u32,
    /// Regions.
    pub num_regions: u32,
    /// Interrupt indexes.
    pub num_irqs: u32,
}

impl DeviceInfo {
    /// Bytes of the layout.
    pub const SIZE: usize = 16;

    /// Encodes it.
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(Self::SIZE);
        for v in [self.argsz, self.flags, self.num_regions, self.num_irqs] {
            put_u32(&mut p, v);
        }
        p
    }

    /// Decodes it; `None` when `p` is too short.
    pub fn decode(p: &[u8]) -> Option<DeviceInfo> {
        Some(DeviceInfo {
            argsz: p.u32_at(0)?,
            flags: p.u32_at(4)?,
            num_regions: p.u32_at(8)?,
            num_irqs: p.u32_at(12)?,
        })
    }
}

/// `struct vfio_region_info` (`VFIO_USER_DEVICE_GET_REGION_INFO`, both
/// ways); a reply's capability chain follows it, at `cap_offset` of the
/// payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegionInfo {
    /// Bytes the sender has room for (request), or needs (reply).
    pub argsz: u32,
    /// `VFIO_REGION_INFO_FLAG_*`.
    pub flags: u32,
    /// Region index.
    pub index: u32,
    /// Offset of the first capability in the payload, 0 for none.
    pub cap_offset: u32,
    /// Bytes.
    pub size: u64,
    /// Offset of the region in the file sent with the reply.
    pub offset: u64,
}

impl RegionInfo {
    /// Bytes of the layout.
    pub const SIZE: usize = 32;

    /// A request for region `index` with room for `argsz` bytes.
    pub fn request(index: u32, argsz: u32) -> RegionInfo {
        RegionInfo {
            argsz,
            index,
            ..RegionInfo::default()
        }
    }

    /// Encodes it.
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(Self::SIZE);
        for v in [self.argsz, self.flags, self.index, self.cap_offset] {
            put_u32(&mut p, v);
        }
        put_u64(&mut p, self.size);
        put_u64(&mut p, self.offset);
        p
    }

    /// Decodes it; `None` when `p` is too short.
    pub fn decode(p: &[u8]) -> Option<RegionInfo> {
        Some(RegionInfo {
            argsz: p.u32_at(0)?,
            flags: p.u32_at(4)?,
            index: p.u32_at(8)?,
            cap_offset: p.u32_at(12)?,
            size: p.u64_at(16)?,
            offset: p.u64_at(24)?,
        })
    }
}

/// Sparse-mmap areas at most read from one capability (a bound against a
/// hostile count).
pub const MAX_SPARSE_AREAS: usize = 64;

/// `struct vfio_region_info_cap_sparse_mmap` with its areas (offset,
/// size), as the only capability of a chain (`next` 0).
pub fn encode_sparse_mmap(areas: &[(u64, u64)]) -> Vec<u8> {
    let mut c = Vec::with_capacity(16 + 16 * areas.len());
    put_u16(&mut c, CAP_SPARSE_MMAP);
    put_u16(&mut c, 1); // version
    put_u32(&mut c, 0); // next
    put_u32(&mut c, areas.len() as u32);
    put_u32(&mut c, 0); // reserved
    for &(offset, size) in areas {
        put_u64(&mut c, offset);
        put_u64(&mut c, size);
    }
    c
}

/// The sparse-mmap areas (offset, size) in the capability chain of a
/// region-info reply `p` (whose [`RegionInfo`] is `info`); empty when it
/// has none. `None` when the chain points past the payload or loops.
pub fn decode_sparse_mmap(info: &RegionInfo, p: &[u8]) -> Option<Vec<(u64, u64)>> {
    let mut areas = Vec::new();
    if info.flags & REGION_FLAG_CAPS == 0 {
        return Some(areas);
    }
    let mut at = info.cap_offset as usize;
    let mut hops = 0;
    while at != 0 {
        hops += 1;
        if hops > 16 || at < RegionInfo::SIZE {
            return None;
        }
        let id = p.u16_at(at)?;
        let next = p.u32_at(at + 4)? as usize;
        if id == CAP_SPARSE_MMAP {
            let n = p.u32_at(at + 8)? as usize;
            for k in 0..n.min(MAX_SPARSE_AREAS) {
                let e = at + 16 + 16 * k;
                areas.push((p.u64_at(e)?, p.u64_at(e + 8)?));
            }
        }
        at = next;
    }
    Some(areas)
}

/// `struct vfio_irq_info` (`VFIO_USER_DEVICE_GET_IRQ_INFO`, both ways).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IrqInfo {
    /// Bytes of the structure.
    pub argsz: u32,
    /// `VFIO_IRQ_INFO_*`.
    pub flags: u32,
    /// Interrupt index.
    pub index: u32,
    /// Vectors.
    pub count: u32,
}

impl IrqInfo {
    /// Bytes of the layout.
    pub const SIZE: usize = 16;

    /// Encodes it.
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(Self::SIZE);
        for v in [self.argsz, self.flags, self.index, self.count] {
            put_u32(&mut p, v);
        }
        p
    }

    /// Decodes it; `None` when `p` is too short.
    pub fn decode(p: &[u8]) -> Option<IrqInfo> {
        Some(IrqInfo {
            argsz: p.u32_at(0)?,
            flags: p.u32_at(4)?,
            index: p.u32_at(8)?,
            count: p.u32_at(12)?,
        })
    }
}

/// `struct vfio_irq_set` (`VFIO_USER_DEVICE_SET_IRQS`) without its data:
/// `DATA_BOOL`'s booleans follow it in the payload; `DATA_EVENTFD`'s
/// descriptors come as ancillary data, one per vector or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IrqSet {
    /// Bytes of the structure and its data.
    pub argsz: u32,
    /// `VFIO_IRQ_SET_DATA_*` | `VFIO_IRQ_SET_ACTION_*`.
    pub flags: u32,
    /// Interrupt index.
    pub index: u32,
    /// First vector.
    pub start: u32,
    /// Vectors.
    pub count: u32,
}

impl IrqSet {
    /// Bytes of the layout (before the data).
    pub const SIZE: usize = 20;

    /// Encodes it.
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(Self::SIZE);
        for v in [self.argsz, self.flags, self.index, self.start, self.count] {
            put_u32(&mut p, v);
        }
        p
    }

    /// Decodes it; `None` when `p` is too short.
    pub fn decode(p: &[u8]) -> Option<IrqSet> {
        Some(IrqSet {
            argsz: p.u32_at(0)?,
            flags: p.u32_at(4)?,
            index: p.u32_at(8)?,
            start: p.u32_at(12)?,
            count: p.u32_at(16)?,
        })
    }
}

/// `struct vfio_user_region_access` (`REGION_READ`/`REGION_WRITE`, both
/// ways): the data follows it (a write's request, a read's reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegionAccess {
    /// Offset in the region.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// Bytes.
    pub count: u32,
}

impl RegionAccess {
    /// Bytes of the layout (before the data).
    pub const SIZE: usize = 16;

    /// Encodes it.
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(Self::SIZE);
        put_u64(&mut p, self.offset);
        put_u32(&mut p, self.region);
        put_u32(&mut p, self.count);
        p
    }

    /// Decodes it; `None` when `p` is too short.
    pub fn decode(p: &[u8]) -> Option<RegionAccess> {
        Some(RegionAccess {
            offset: p.u64_at(0)?,
            region: p.u32_at(8)?,
            count: p.u32_at(12)?,
        })
    }
}

/// One write of `VFIO_USER_REGION_WRITE_MULTI` (after its `u64` count):
/// at most 8 bytes of data in a field of 8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteMultiEntry {
    /// Where.
    pub access: RegionAccess,
    /// The data (the first `access.count` bytes count).
    pub data: [u8; 8],
}

impl WriteMultiEntry {
    /// Bytes of one entry.
    pub const SIZE: usize = 24;

    /// The entries of a `REGION_WRITE_MULTI` payload; `None` when the
    /// payload is shorter than its count says or an entry's count is
    /// over 8.
    pub fn decode_all(p: &[u8]) -> Option<Vec<WriteMultiEntry>> {
        let n = p.u64_at(0)?;
        let mut out = Vec::new();
        for i in 0..n {
            let at = 8usize.checked_add((i as usize).checked_mul(Self::SIZE)?)?;
            let access = RegionAccess::decode(p.get(at..)?)?;
            if access.count > 8 {
                return None;
            }
            let data = p.get(at + 16..at + 24)?.try_into().ok()?;
            out.push(WriteMultiEntry { access, data });
        }
        Some(out)
    }

    /// Encodes a whole `REGION_WRITE_MULTI` payload.
    pub fn encode_all(entries: &[WriteMultiEntry]) -> Vec<u8> {
        let mut p = Vec::with_capacity(8 + Self::SIZE * entries.len());
        put_u64(&mut p, entries.len() as u64);
        for e in entries {
            p.extend_from_slice(&e.access.encode());
            p.extend_from_slice(&e.data);
        }
        p
    }
}

/// `struct vfio_user_dma_map` (`VFIO_USER_DMA_MAP`): the memory's file,
/// if any, comes as ancillary data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DmaMap {
    /// Bytes of the structure.
    pub argsz: u32,
    /// `VFIO_DMA_MAP_FLAG_*`.
    pub flags: u32,
    /// Offset of the window's first byte in the file.
    pub offset: u64,
    /// IOVA.
    pub addr: u64,
    /// Bytes.
    pub size: u64,
}

impl DmaMap {
    /// Bytes of the layout.
    pub const SIZE: usize = 32;

    /// Encodes it.
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(Self::SIZE);
        put_u32(&mut p, self.argsz);
        put_u32(&mut p, self.flags);
        put_u64(&mut p, self.offset);
        put_u64(&mut p, self.addr);
        put_u64(&mut p, self.size);
        p
    }

    /// Decodes it; `None` when `p` is too short.
    pub fn decode(p: &[u8]) -> Option<DmaMap> {
        Some(DmaMap {
            argsz: p.u32_at(0)?,
            flags: p.u32_at(4)?,
            offset: p.u64_at(8)?,
            addr: p.u64_at(16)?,
            size: p.u64_at(24)?,
        })
    }
}

/// `struct vfio_user_dma_unmap` (`VFIO_USER_DMA_UNMAP`, both ways).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DmaUnmap {
    /// Bytes of the structure.
    pub argsz: u32,
    /// `VFIO_DMA_UNMAP_FLAG_*`.
    pub flags: u32,
    /// IOVA.
    pub addr: u64,
    /// Bytes.
    pub size: u64,
}

impl DmaUnmap {
    /// Bytes of the layout.
    pub const SIZE: usize = 24;

    /// Encodes it.
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(Self::SIZE);
        put_u32(&mut p, self.argsz);
        put_u32(&mut p, self.flags);
        put_u64(&mut p, self.addr);
        put_u64(&mut p, self.size);
        p
    }

    /// Decodes it; `None` when `p` is too short.
    pub fn decode(p: &[u8]) -> Option<DmaUnmap> {
        Some(DmaUnmap {
            argsz: p.u32_at(0)?,
            flags: p.u32_at(4)?,
            addr: p.u64_at(8)?,
            size: p.u64_at(16)?,
        })
    }
}

/// `struct vfio_user_dma_region_access` (`VFIO_USER_DMA_READ`/`WRITE`,
/// server to client, both ways): the data follows it (a write's request,
/// a read's reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DmaAccess {
    /// IOVA.
    pub addr: u64,
    /// Bytes.
    pub count: u64,
}

impl DmaAccess {
    /// Bytes of the layout (before the data).
    pub const SIZE: usize = 16;

    /// Encodes it.
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(Self::SIZE);
        put_u64(&mut p, self.addr);
        put_u64(&mut p, self.count);
        p
    }

    /// Decodes it; `None` when `p` is too short.
    pub fn decode(p: &[u8]) -> Option<DmaAccess> {
        Some(DmaAccess {
            addr: p.u64_at(0)?,
            count: p.u64_at(8)?,
        })
    }
}

// ---------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------

/// Why a message could not be received.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    /// The peer closed the connection between messages.
    #[error("connection closed")]
    Closed,
    /// The header's size is below 16 or above [`MAX_MESSAGE`]: the stream
    /// cannot be resynchronised.
    #[error("message size {0} out of range")]
    BadSize(u32),
    /// More than [`MAX_MSG_FDS`] descriptors came with the message (all
    /// closed), or the kernel truncated them.
    #[error("too many file descriptors with one message")]
    TooManyFds,
    /// The socket failed, or closed inside a message.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
}

/// Receives one message from the stream socket `fd`: the header with its
/// ancillary fds (at most [`MAX_MSG_FDS`]), then the rest of the payload.
/// A message too large or too small, or with too many fds, is refused and
/// its fds closed.
pub fn recv(fd: RawFd) -> Result<Message, RecvError> {
    let mut head = [0u8; HEADER_SIZE];
    let (n, fds, truncated) = recvmsg_fds(fd, &mut head)?;
    if n == 0 {
        return Err(RecvError::Closed);
    }
    read_exact(fd, &mut head[n..])?;
    if truncated {
        return Err(RecvError::TooManyFds);
    }
    let header = Header::decode(&head);
    let size = header.size as usize;
    if !(HEADER_SIZE..=MAX_MESSAGE).contains(&size) {
        return Err(RecvError::BadSize(header.size));
    }
    let mut payload = vec![0u8; size - HEADER_SIZE];
    read_exact(fd, &mut payload)?;
    Ok(Message {
        header,
        payload,
        fds,
    })
}

/// Sends one message (the header's size set here) with `fds` attached.
pub fn send(fd: RawFd, header: Header, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
    send_parts(fd, header, &[payload], fds)
}

/// Sends one message whose payload is `parts` one after the other.
/// `EMSGSIZE` for a message over [`MAX_MESSAGE`], `EINVAL` for more than
/// [`MAX_MSG_FDS`] fds; nothing is sent then.
pub fn send_parts(fd: RawFd, mut header: Header, parts: &[&[u8]], fds: &[RawFd]) -> io::Result<()> {
    let total = HEADER_SIZE + parts.iter().map(|p| p.len()).sum::<usize>();
    if total > MAX_MESSAGE {
        return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
    }
    if fds.len() > MAX_MSG_FDS {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    header.size = total as u32;
    let head = header.encode();
    let mut bufs: Vec<&[u8]> = std::iter::once(&head[..])
        .chain(parts.iter().copied())
        .filter(|b| !b.is_empty())
        .collect();
    let mut first = true;
    while !bufs.is_empty() {
        let n = sendmsg_fds(fd, &bufs, if first { fds } else { &[] })?;
        first = false;
        let mut left = n;
        while left > 0 {
            let k = left.min(bufs[0].len());
            bufs[0] = &bufs[0][k..];
            left -= k;
            if bufs[0].is_empty() {
                bufs.remove(0);
            }
        }
    }
    Ok(())
}

fn read_exact(fd: RawFd, mut buf: &mut [u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: buf is valid writable memory of buf.len() bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        buf = &mut buf[n as usize..];
    }
    Ok(())
}

/// Room for the control message: more than [`MAX_MSG_FDS`] descriptors,
/// so that a message with too many is seen as such, not cut silently.
const CMSG_ROOM: usize = 128;

/// One `recvmsg` into `buf`: bytes read, the fds that came with them
/// (close-on-exec), and whether there were too many or they were cut.
fn recvmsg_fds(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>, bool)> {
    let mut cmsg = [0u64; CMSG_ROOM / 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = CMSG_ROOM;
    let n = loop {
        // SAFETY: msg points at iov and cmsg, both live for the call.
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let fds = take_fds(&msg);
    let truncated = msg.msg_flags & libc::MSG_CTRUNC != 0 || fds.len() > MAX_MSG_FDS;
    Ok((n, fds, truncated))
}

/// The `SCM_RIGHTS` descriptors of a received message, now owned here.
fn take_fds(msg: &libc::msghdr) -> Vec<OwnedFd> {
    let mut fds = Vec::new();
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled,
    // bounded by msg_controllen; each SCM_RIGHTS payload is an array of
    // fds new to this process and owned by nobody else.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c) as *const RawFd;
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    fds
}

/// One `sendmsg` of `bufs` with `fds` as `SCM_RIGHTS` (at most
/// [`MAX_MSG_FDS`], checked by the caller); bytes sent.
fn sendmsg_fds(fd: RawFd, bufs: &[&[u8]], fds: &[RawFd]) -> io::Result<usize> {
    let mut iov: Vec<libc::iovec> = bufs
        .iter()
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut _,
            iov_len: b.len(),
        })
        .collect();
    let mut cmsg = [0u64; CMSG_ROOM / 8];
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len();
    if !fds.is_empty() {
        let data_len = std::mem::size_of_val(fds) as u32;
        // SAFETY: CMSG_SPACE/LEN compute sizes; the buffer holds
        // CMSG_ROOM bytes, more than MAX_MSG_FDS descriptors need, and is
        // aligned for cmsghdr.
        unsafe {
            msg.msg_control = cmsg.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(data_len) as usize;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(data_len) as usize;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(c) as *mut RawFd,
                fds.len(),
            );
        }
    }
    loop {
        // SAFETY: msg points at iov (borrowing bufs) and cmsg, live for
        // the call. MSG_NOSIGNAL: a closed peer is EPIPE, not SIGPIPE.
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

pub mod ext;

#[cfg(test)]
mod tests;
