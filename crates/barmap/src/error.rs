//! barmap's error type.

use barmap_target::{ErrorClass, TargetError};

/// Everything that can go wrong, each case typed. A call that fails with one
/// of these changed no state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The BAR index is not one of the device's regions.
    #[error("region {0} does not exist on this device")]
    NoSuchRegion(u32),
    /// The region exists but may not be mmapped at all.
    #[error("region {0} may not be mmapped")]
    NotMappable(u32),
    /// Offset or length is not a multiple of the region's page size (4 KiB,
    /// or 2 MiB for a BAR backed by huge pages).
    #[error("offset {offset:#x} and length {len:#x} must be multiples of the page size ({page_size:#x})")]
    Unaligned {
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: usize,
        /// The region's page size.
        page_size: usize,
    },
    /// A zero-length request.
    #[error("zero-length request")]
    ZeroLength,
    /// The range runs past the end of the region.
    #[error("range {offset:#x}+{len:#x} lies outside region {region} of {size:#x} bytes")]
    OutOfRange {
        /// Region index.
        region: u32,
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: usize,
        /// Region size.
        size: u64,
    },
    /// The range is not inside one of the region's mmappable areas (it
    /// touches, say, an MSI-X table).
    #[error("range {offset:#x}+{len:#x} of region {region} is not inside one mmappable area")]
    SparseArea {
        /// Region index.
        region: u32,
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: usize,
    },
    /// A writable mapping or a write of a read-only region.
    #[error("region {0} is read-only")]
    ReadOnly(u32),
    /// A read of a region that cannot be read.
    #[error("region {0} is not readable")]
    NotReadable(u32),
    /// Device memory is disabled: COMMAND.MEM is clear or the device is in a
    /// low-power state (the kernel answers EIO).
    #[error("device memory is disabled (COMMAND.MEM clear or low power)")]
    MemoryDisabled,
    /// The range is not (or no longer) mapped: a double unmap, say.
    #[error("range {offset:#x}+{len:#x} of the mapping is not mapped")]
    NotMapped {
        /// Offset into the mapping.
        offset: usize,
        /// Length.
        len: usize,
    },
    /// The device was dropped; its mappings are revoked for good.
    #[error("the device has been dropped")]
    DeviceGone,
    /// A checked access hit a page that faults (revoked, poisoned, unmapped).
    #[error("access at offset {offset:#x} of the mapping faulted: {}", std::io::Error::from_raw_os_error(*.errno))]
    Fault {
        /// Offset into the mapping.
        offset: usize,
        /// The errno the kernel reported (EFAULT).
        errno: i32,
    },
    /// A config-space access outside the 256 bytes.
    #[error("config space access at {offset:#x}+{len} is outside the 256-byte header")]
    ConfigRange {
        /// Offset.
        offset: u64,
        /// Length.
        len: usize,
    },
    /// A BAR asked for huge pages but its size is not a multiple of 2 MiB.
    #[error("BAR{region}: {size:#x} bytes cannot be backed by 2 MiB huge pages (not a multiple of 2 MiB)")]
    HugePageSize {
        /// BAR index.
        region: u32,
        /// Its size.
        size: u64,
    },
    /// A BAR asked for huge pages but too few 2 MiB huge pages are free.
    #[error(
        "BAR{region}: needs {needed} free 2 MiB huge pages, {free} are free \
         (reserve more with the sysctl vm.nr_hugepages)"
    )]
    HugePagesUnavailable {
        /// BAR index.
        region: u32,
        /// Huge pages the BAR needs.
        needed: u64,
        /// Huge pages free when it was allocated.
        free: u64,
    },
    /// A BAR asked for huge pages but this kernel cannot serve them: no
    /// 2 MiB hugetlbfs pool, or no userfaultfd MINOR mode on hugetlbfs.
    #[error("huge-page BAR memory is not supported here: {0}")]
    HugePagesUnsupported(String),
    /// A memory BAR whose size is not a power of two of at least 16 bytes
    /// (PCI sizes a BAR by the address bits it leaves writable).
    #[error("BAR{region}: size {size:#x} is not a power of two of at least 16 bytes")]
    BarSizeNotPowerOfTwo {
        /// BAR index.
        region: u32,
        /// The size asked for.
        size: u64,
    },
    /// A memory BAR larger than its type allows: 2 GiB for a 32-bit BAR,
    /// [`crate::memory::MAX_BAR64_SIZE`] for a 64-bit one.
    #[error(
        "BAR{region}: size {size:#x} is larger than a {bits}-bit memory BAR may be here ({})",
        crate::memory::human(*max)
    )]
    BarTooLarge {
        /// BAR index.
        region: u32,
        /// The size asked for.
        size: u64,
        /// 32 or 64.
        bits: u32,
        /// The largest size allowed.
        max: u64,
    },
    /// Committing `needed` more bytes of device memory would pass the
    /// memory limit ([`crate::memory::MemoryBudget`]): nothing was committed.
    #[error(
        "device memory limit: {} more would pass the limit of {} ({} committed); \
         raise it with barmap run --memory-limit or DeviceBuilder::memory_limit",
        crate::memory::human(*needed),
        crate::memory::human(*limit),
        crate::memory::human(*committed)
    )]
    MemoryLimit {
        /// Bytes the request needed.
        needed: u64,
        /// Bytes committed when it was refused.
        committed: u64,
        /// The limit.
        limit: u64,
    },
    /// An invalid device description.
    #[error("invalid device description: {0}")]
    InvalidSpec(String),
    /// No userfaultfd could be opened.
    #[error(
        "userfaultfd is not available ({0}). Run as root, or set the sysctl \
         vm.unprivileged_userfaultfd=1, or give this user read-write access to /dev/userfaultfd"
    )]
    UffdUnavailable(String),
    /// A caller's buffer could not be read or written (the kernel's EFAULT
    /// from copy_from_user/copy_to_user): unmapped, or a mapping of device
    /// memory that is disabled. No signal is raised and nothing changed.
    #[error("buffer at {addr:#x} ({len} bytes) is not accessible: {}", std::io::Error::from_raw_os_error(*.errno))]
    BadBuffer {
        /// The buffer's address.
        addr: usize,
        /// Its length.
        len: usize,
        /// The errno (EFAULT).
        errno: i32,
    },
    /// The device belongs to another process: this is a forked child of the
    /// process that built it. A child gets no service and no mappings of
    /// its parent's device (see ARCHITECTURE.md, "fork").
    #[error("the device belongs to process {owner}, not to this one (a forked child)")]
    ForeignProcess {
        /// The process that built the device.
        owner: u32,
    },
    /// A system call failed.
    #[error("{op}: {}", std::io::Error::from_raw_os_error(*.errno))]
    Os {
        /// What was being done.
        op: &'static str,
        /// The errno.
        errno: i32,
    },
}

impl Error {
    /// The errno-like class, for comparison with the kernel's vfio-pci.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::NoSuchRegion(_)
            | Error::NotMappable(_)
            | Error::Unaligned { .. }
            | Error::ZeroLength
            | Error::OutOfRange { .. }
            | Error::SparseArea { .. }
            | Error::NotMapped { .. }
            | Error::ConfigRange { .. }
            | Error::InvalidSpec(_)
            | Error::BarSizeNotPowerOfTwo { .. }
            | Error::BarTooLarge { .. }
            | Error::HugePageSize { .. } => ErrorClass::InvalidArgument,
            Error::ReadOnly(_) | Error::NotReadable(_) | Error::UffdUnavailable(_) => {
                ErrorClass::Permission
            }
            Error::MemoryDisabled => ErrorClass::MemoryDisabled,
            Error::HugePagesUnsupported(_) => ErrorClass::Unsupported,
            Error::HugePagesUnavailable { .. } | Error::MemoryLimit { .. } => ErrorClass::Other,
            Error::DeviceGone
            | Error::Fault { .. }
            | Error::BadBuffer { .. }
            | Error::ForeignProcess { .. }
            | Error::Os { .. } => ErrorClass::Other,
        }
    }

    pub(crate) fn os(op: &'static str) -> impl FnOnce(i32) -> Error {
        move |errno| Error::Os { op, errno }
    }
}

impl From<Error> for TargetError {
    fn from(e: Error) -> TargetError {
        TargetError::new(e.class(), e.to_string())
    }
}

/// `Result` with barmap's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
