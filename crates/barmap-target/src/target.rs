//! One interface for "a PCI function whose BARs can be mmapped", implemented by
//! barmap's emulated [`Device`](https://docs.rs/barmap/latest/barmap/struct.Device.html) and by a real vfio-pci device
//! (the `barmap-vfio` crate), so that the scenario suite in
//! scenario suite runs unchanged against both.

use std::fmt;

/// Access requested for a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prot {
    /// PROT_READ.
    Read,
    /// PROT_READ | PROT_WRITE.
    ReadWrite,
}

impl Prot {
    /// Whether the mapping may be written.
    pub fn writable(self) -> bool {
        matches!(self, Prot::ReadWrite)
    }
}

/// Where a scenario places a mapping in the address space: what decides
/// whether the kernel can map it with huge (PMD) entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// At a 2 MiB boundary: 6.12+ fills 2 MiB chunks with one PMD fault.
    #[default]
    Aligned,
    /// 4 KiB past a 2 MiB boundary: no 2 MiB chunk of the mapping lines up
    /// with the BAR, so the kernel takes one fault per 4 KiB page.
    Misaligned,
}

impl Placement {
    /// Both placements, aligned first.
    pub const BOTH: [Placement; 2] = [Placement::Aligned, Placement::Misaligned];

    /// The boundary mappings are aligned to.
    pub const ALIGN: usize = 2 << 20;

    /// How far past [`Placement::ALIGN`] a mapping starts.
    pub fn skew(self) -> usize {
        match self {
            Placement::Aligned => 0,
            Placement::Misaligned => 4096,
        }
    }

    /// The name used in scenario names and reports.
    pub fn name(self) -> &'static str {
        match self {
            Placement::Aligned => "aligned",
            Placement::Misaligned => "misaligned",
        }
    }

    /// The other placement.
    pub fn other(self) -> Placement {
        match self {
            Placement::Aligned => Placement::Misaligned,
            Placement::Misaligned => Placement::Aligned,
        }
    }
}

/// A PROT_NONE reservation an address for a placed mapping is chosen in;
/// the mapping then goes over it with MAP_FIXED, and dropping the
/// reservation releases whatever of it the mapping did not replace.
#[derive(Debug)]
pub struct Reservation {
    base: usize,
    span: usize,
    /// Where the mapping goes.
    pub addr: usize,
    len: usize,
}

impl Reservation {
    /// Reserves room for `len` bytes at `placement` (one boundary of slack).
    pub fn new(len: usize, placement: Placement) -> std::io::Result<Self> {
        let span = len
            .checked_add(Placement::ALIGN + placement.skew())
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOMEM))?;
        // SAFETY: a fresh anonymous reservation; no MAP_FIXED.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                span,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = base as usize;
        let addr = base.next_multiple_of(Placement::ALIGN) + placement.skew();
        Ok(Reservation {
            base,
            span,
            addr,
            len,
        })
    }

    /// Releases the slack around `addr..addr+len` (the mapping placed
    /// there is kept); without a mapping, the whole reservation goes.
    pub fn release(self, mapped: bool) {
        let end = self.base + self.span;
        let keep = if mapped {
            (self.addr, self.addr + self.len)
        } else {
            (self.addr, self.addr)
        };
        // SAFETY: the ranges lie inside our own reservation and are used by
        // nothing (the mapping, if any, is outside them).
        unsafe {
            if keep.0 > self.base {
                libc::munmap(self.base as *mut _, keep.0 - self.base);
            }
            if end > keep.1 {
                libc::munmap(keep.1 as *mut _, end - keep.1);
            }
        }
    }
}

/// The class of a failure, comparable across targets: the kernel answers with
/// an errno, barmap with a typed error, and scenarios compare the classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The request itself is malformed or out of range (EINVAL).
    InvalidArgument,
    /// The request is well formed but not permitted (EACCES/EPERM).
    Permission,
    /// Device memory is disabled or the device is in low power (EIO).
    MemoryDisabled,
    /// The target does not support the operation (ENOTTY/EOPNOTSUPP).
    Unsupported,
    /// Anything else.
    Other,
}

/// An error from a [`Target`], with its class and a human-readable cause.
#[derive(Debug, Clone)]
pub struct TargetError {
    /// The comparable class.
    pub class: ErrorClass,
    /// The cause, as the target reported it.
    pub detail: String,
}

impl TargetError {
    /// Builds an error of `class` with `detail`.
    pub fn new(class: ErrorClass, detail: impl Into<String>) -> Self {
        TargetError {
            class,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.class, self.detail)
    }
}

impl std::error::Error for TargetError {}

/// Where the scenario suite finds things on a target.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// A memory BAR for data checks: region index.
    pub memory_region: u32,
    /// Size of that region in bytes.
    pub memory_size: u64,
    /// A region index that exists but may not be mmapped, if the target has one.
    pub unmappable_region: Option<u32>,
    /// A region index that does not exist on the target.
    pub missing_region: u32,
}

/// A PCI function whose BARs can be mmapped and whose memory decoding can be
/// switched off and on.
pub trait Target: Send + Sync {
    /// A live mapping of a region.
    type Mapping: TargetMapping;

    /// A short name for reports ("barmap", "vfio 0000:00:03.0").
    fn name(&self) -> String;

    /// Which regions the scenarios use.
    fn layout(&self) -> Layout;

    /// Maps `len` bytes of `region` from `offset` (MAP_SHARED).
    fn map(
        &self,
        region: u32,
        offset: u64,
        len: usize,
        prot: Prot,
    ) -> Result<Self::Mapping, TargetError>;

    /// [`Target::map`] at an address placed as `placement` says. A target
    /// that cannot choose the address maps anywhere (the default).
    fn map_placed(
        &self,
        region: u32,
        offset: u64,
        len: usize,
        prot: Prot,
        placement: Placement,
    ) -> Result<Self::Mapping, TargetError> {
        let _ = placement;
        self.map(region, offset, len, prot)
    }

    /// Sets or clears COMMAND.MEM through config space.
    fn set_memory_enabled(&self, enabled: bool) -> Result<(), TargetError>;

    /// Resets the function (FLR or equivalent); `Unsupported` if it cannot.
    fn reset(&self) -> Result<(), TargetError>;

    /// Reads region bytes through the device (not through a mapping).
    fn read_region(&self, region: u32, offset: u64, buf: &mut [u8]) -> Result<(), TargetError>;

    /// Writes region bytes through the device (not through a mapping).
    fn write_region(&self, region: u32, offset: u64, buf: &[u8]) -> Result<(), TargetError>;
}

/// A live mapping returned by [`Target::map`]. Dropping it unmaps what is left.
pub trait TargetMapping: Send + Sync {
    /// Start address.
    fn addr(&self) -> usize;
    /// Length in bytes.
    fn len(&self) -> usize;
    /// Whether the mapping has no bytes (never true for a live mapping).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Unmaps `len` bytes at `offset` into the mapping; the rest stays usable.
    fn unmap_range(&mut self, offset: usize, len: usize) -> Result<(), TargetError>;
}
