//! A vfio-pci device: information, regions, config space, reset, mmap.

use crate::caps::{self, Capability, SparseArea};
use crate::container::{ioctl_ptr, ioctl_val, Container, Group};
use crate::mapping::BarMapping;
use crate::uapi::*;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// What `VFIO_DEVICE_GET_INFO` says about a device.
#[derive(Debug, Clone, Copy)]
pub struct DeviceInfo {
    /// `VFIO_DEVICE_FLAGS_*`.
    pub flags: u32,
    /// Number of regions (for vfio-pci: 9 plus device-specific ones).
    pub num_regions: u32,
    /// Number of interrupt types.
    pub num_irqs: u32,
}

impl DeviceInfo {
    /// Whether `VFIO_DEVICE_RESET` is supported.
    pub fn supports_reset(&self) -> bool {
        self.flags & VFIO_DEVICE_FLAGS_RESET != 0
    }
}

/// What `VFIO_DEVICE_GET_REGION_INFO` says about one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionInfo {
    /// Region index.
    pub index: u32,
    /// `VFIO_REGION_INFO_FLAG_*`.
    pub flags: u32,
    /// Size in bytes (0: the region is absent, such as an unused BAR).
    pub size: u64,
    /// Offset of the region in the device fd.
    pub offset: u64,
    /// The capability chain.
    pub caps: Vec<Capability>,
}

impl RegionInfo {
    /// Whether the region may be mmapped (at least in part).
    pub fn mmappable(&self) -> bool {
        self.flags & VFIO_REGION_INFO_FLAG_MMAP != 0
    }

    /// The sparse mmap areas, if the region has that capability.
    pub fn sparse_areas(&self) -> Option<&[SparseArea]> {
        self.caps.iter().find_map(|c| match c {
            Capability::SparseMmap(a) => Some(a.as_slice()),
            _ => None,
        })
    }
}

/// An open vfio-pci device with its container and group.
#[derive(Debug)]
pub struct VfioDevice {
    name: String,
    fd: OwnedFd,
    info: DeviceInfo,
    regions: Vec<Option<RegionInfo>>,
    map_align: usize,
    // Kept open for as long as the device is: closing them detaches the IOMMU.
    _group: Group,
    _container: Container,
}

/// Huge-page size used to align large BAR mappings by default.
pub const HUGE_ALIGN: usize = 2 << 20;

impl VfioDevice {
    /// Opens the PCI device `bdf` (e.g. `0000:00:03.0`, bound to vfio-pci)
    /// through its own container and group, with the type1 IOMMU.
    pub fn open_pci(bdf: &str) -> io::Result<Self> {
        let group = Group::open(Group::id_of_pci_device(bdf)?)?;
        if !group.is_viable()? {
            return Err(io::Error::other(format!(
                "group {} is not viable: bind every device in it to vfio-pci",
                group.id()
            )));
        }
        let container = Container::open()?;
        group.set_container(&container)?;
        container.set_type1_iommu()?;
        let fd = group.device_fd(bdf)?;
        let info = device_info(&fd)?;
        let regions = (0..info.num_regions)
            .map(|i| region_info(&fd, i).ok())
            .collect();
        Ok(VfioDevice {
            name: bdf.to_string(),
            fd,
            info,
            regions,
            map_align: HUGE_ALIGN,
            _group: group,
            _container: container,
        })
    }

    /// The device name (PCI address).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Device information.
    pub fn info(&self) -> DeviceInfo {
        self.info
    }

    /// Region `index` as read at open time (None: absent or the query failed).
    pub fn region(&self, index: u32) -> Option<&RegionInfo> {
        self.regions.get(index as usize).and_then(|r| r.as_ref())
    }

    /// Asks the kernel for region `index` again.
    pub fn query_region(&self, index: u32) -> io::Result<RegionInfo> {
        region_info(&self.fd, index)
    }

    /// Alignment applied by [`VfioDevice::map`] to mappings at least this
    /// large (default 2 MiB; 0 or 1 lets the kernel choose the address).
    pub fn set_map_alignment(&mut self, align: usize) {
        self.map_align = align;
    }

    /// The alignment [`VfioDevice::map`] applies.
    pub fn map_alignment(&self) -> usize {
        self.map_align
    }

    /// The device-fd offset of region `index`: from region info where the
    /// kernel knows the region; otherwise vfio-pci's fixed encoding, so that
    /// the kernel's own mmap/read validation answers for bad indexes.
    pub(crate) fn region_offset(&self, index: u32) -> u64 {
        match self.region(index) {
            Some(r) => r.offset,
            None => (index as u64) << VFIO_PCI_OFFSET_SHIFT,
        }
    }

    /// mmaps `len` bytes of region `index` from `offset` with MAP_SHARED.
    /// Mappings of at least the configured alignment are placed at an
    /// address aligned to it (so that huge pfn mappings are possible).
    pub fn map(
        &self,
        index: u32,
        offset: u64,
        len: usize,
        writable: bool,
    ) -> io::Result<BarMapping> {
        let align = if self.map_align > 1 && len >= self.map_align {
            self.map_align
        } else {
            0
        };
        self.map_aligned(index, offset, len, writable, align)
    }

    /// As [`VfioDevice::map`] with an explicit address alignment (0: any).
    pub fn map_aligned(
        &self,
        index: u32,
        offset: u64,
        len: usize,
        writable: bool,
        align: usize,
    ) -> io::Result<BarMapping> {
        let file_offset = self
            .region_offset(index)
            .checked_add(offset)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        BarMapping::new(&self.fd, file_offset, len, writable, align)
    }

    /// As [`VfioDevice::map`] at an address placed on a 2 MiB boundary or
    /// deliberately 4 KiB past one (whatever the configured alignment).
    pub fn map_placed(
        &self,
        index: u32,
        offset: u64,
        len: usize,
        writable: bool,
        placement: barmap_target::Placement,
    ) -> io::Result<BarMapping> {
        let file_offset = self
            .region_offset(index)
            .checked_add(offset)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        BarMapping::placed(&self.fd, file_offset, len, writable, placement)
    }

    /// Reads region bytes with `pread`; a short read is an error.
    pub fn read_region(&self, index: u32, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let at = self.region_offset(index) + offset;
        // SAFETY: pread writes at most buf.len() bytes into buf.
        let n = unsafe {
            libc::pread(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                at as libc::off_t,
            )
        };
        check_len(n, buf.len())
    }

    /// Writes region bytes with `pwrite`; a short write is an error.
    pub fn write_region(&self, index: u32, offset: u64, buf: &[u8]) -> io::Result<()> {
        let at = self.region_offset(index) + offset;
        // SAFETY: pwrite reads at most buf.len() bytes from buf.
        let n = unsafe {
            libc::pwrite(
                self.fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                at as libc::off_t,
            )
        };
        check_len(n, buf.len())
    }

    /// Reads a 16-bit config-space register.
    pub fn config_read_u16(&self, reg: u64) -> io::Result<u16> {
        let mut b = [0u8; 2];
        self.read_region(VFIO_PCI_CONFIG_REGION_INDEX, reg, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// Writes a 16-bit config-space register.
    pub fn config_write_u16(&self, reg: u64, value: u16) -> io::Result<()> {
        self.write_region(VFIO_PCI_CONFIG_REGION_INDEX, reg, &value.to_le_bytes())
    }

    /// Sets or clears COMMAND.MEM (memory decoding).
    pub fn set_memory_enabled(&self, enabled: bool) -> io::Result<()> {
        let cmd = self.config_read_u16(PCI_COMMAND)?;
        let new = if enabled {
            cmd | PCI_COMMAND_MEMORY
        } else {
            cmd & !PCI_COMMAND_MEMORY
        };
        self.config_write_u16(PCI_COMMAND, new)
    }

    /// `VFIO_DEVICE_RESET`. Fails with `ENOTTY` without asking the kernel
    /// when the device flags say reset is not supported.
    pub fn reset(&self) -> io::Result<()> {
        if !self.info.supports_reset() {
            return Err(io::Error::from_raw_os_error(libc::ENOTTY));
        }
        ioctl_val(&self.fd, VFIO_DEVICE_RESET, 0).map(drop)
    }
}

fn check_len(n: isize, want: usize) -> io::Result<()> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else if n as usize != want {
        Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("short transfer: {n} of {want} bytes"),
        ))
    } else {
        Ok(())
    }
}

fn device_info(fd: &OwnedFd) -> io::Result<DeviceInfo> {
    let mut info = VfioDeviceInfo {
        argsz: std::mem::size_of::<VfioDeviceInfo>() as u32,
        ..Default::default()
    };
    // SAFETY: GET_INFO writes at most argsz bytes, the size of `info`.
    unsafe { ioctl_ptr(fd, VFIO_DEVICE_GET_INFO, &mut info)? };
    Ok(DeviceInfo {
        flags: info.flags,
        num_regions: info.num_regions,
        num_irqs: info.num_irqs,
    })
}

/// Queries region `index`, then again with room for the capability chain
/// if the kernel says there is one.
fn region_info(fd: &OwnedFd, index: u32) -> io::Result<RegionInfo> {
    let mut head = VfioRegionInfo {
        argsz: REGION_INFO_SIZE as u32,
        index,
        ..Default::default()
    };
    // SAFETY: GET_REGION_INFO writes at most argsz bytes, the size of `head`.
    unsafe { ioctl_ptr(fd, VFIO_DEVICE_GET_REGION_INFO, &mut head)? };
    let mut caps = Vec::new();
    if head.flags & VFIO_REGION_INFO_FLAG_CAPS != 0 && head.argsz as usize > REGION_INFO_SIZE {
        let words = (head.argsz as usize).div_ceil(8);
        let mut buf = vec![0u64; words];
        let want = VfioRegionInfo {
            argsz: head.argsz,
            index,
            ..Default::default()
        };
        // SAFETY: `buf` is u64-aligned and at least REGION_INFO_SIZE bytes.
        unsafe { std::ptr::write(buf.as_mut_ptr().cast::<VfioRegionInfo>(), want) };
        // SAFETY: the buffer is argsz bytes long, as declared in its header.
        unsafe { ioctl_ptr(fd, VFIO_DEVICE_GET_REGION_INFO, buf.as_mut_ptr())? };
        // SAFETY: the buffer holds the kernel-written structure at its start.
        head = unsafe { std::ptr::read(buf.as_ptr().cast::<VfioRegionInfo>()) };
        let bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let len = (head.argsz as usize).min(bytes.len());
        caps = caps::parse_chain(&bytes[..len], head.cap_offset)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    }
    Ok(RegionInfo {
        index,
        flags: head.flags,
        size: head.size,
        offset: head.offset,
        caps,
    })
}
