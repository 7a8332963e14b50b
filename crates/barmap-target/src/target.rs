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
