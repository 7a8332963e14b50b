//! A device served by a vfio-user server (`barmap run --device
//! vfio-user:PATH`), presented through the same VFIO fds as barmap's own
//! models. The protocol is [`barmap_client`]'s; this module turns the
//! program's VFIO calls into its requests:
//!
//! - `VFIO_DEVICE_GET_REGION_INFO` and `GET_IRQ_INFO` answer what the
//!   server described at connect time (a region the server offers a file
//!   for is mappable, with the server's sparse areas as the sparse-mmap
//!   capability);
//! - `pread`/`pwrite` of the device fd are `REGION_READ`/`REGION_WRITE`
//!   (config space included), with the kernel's bounds checks first;
//! - `mmap` of a BAR maps the server's file (`MAP_SHARED`) at the
//!   program's address: the mapping is the kernel's, and revoking it is the
//!   server's (it truncates the file). A BAR the server offers no file for,
//!   and the parts of a BAR outside its sparse areas, are mapped through
//!   barmap's register trap ([`barmap_models::trap`]): the pages stay
//!   inaccessible, and each load or store the program makes there is one
//!   `REGION_READ` or `REGION_WRITE` ([`RegisterProxy`]);
//! - `SET_IRQS` is checked as vfio-pci checks it, then passed on with the
//!   program's eventfds: the server signals them itself;
//! - the IOMMU table the device is attached to sends each DMA map as
//!   `DMA_MAP` with the file behind the program's memory
//!   ([`backing_file`]) and each unmap as `DMA_UNMAP`; private memory goes
//!   without a file, and the server's `DMA_READ`/`DMA_WRITE` requests reach
//!   the program's memory through the device's own copy of what it was
//!   sent ([`SentMaps`]: never the table's lock, which a map waiting for
//!   the server's reply holds while the server waits for its DMA);
//! - an error from the server is the server's errno; a server that went
//!   away is `ENODEV`.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use barmap::device::pci;
use barmap::{Placement, Prot};
use barmap_client::{DmaAccess, Remote};
use barmap_models::{Ctx, DeviceModel, Layout, ModelDevice, ModelMapping, RegionKind, Width};
use barmap_vfio::uapi as v;

use crate::dma::DmaMapping;
use crate::irq::Irqs;
use crate::{user, Errno};

/// The DMA mappings a server was sent, by IOVA: what its `DMA_READ` and
/// `DMA_WRITE` requests translate through (an access outside them, or
/// against their permissions, is EFAULT to the server; memory the program
/// unmapped is EFAULT too, as the kernel's copies find it).
#[derive(Debug, Default)]
pub struct SentMaps {
    maps: Mutex<std::collections::BTreeMap<u64, DmaMapping>>,
}

impl SentMaps {
    /// The process address of `len` bytes at `iova` in one mapping.
    fn translate(&self, iova: u64, len: u64, write: bool) -> Result<u64, i32> {
        let maps = self.maps.lock().unwrap();
        let (_, m) = maps.range(..=iova).next_back().ok_or(libc::EFAULT)?;
        let end = iova.checked_add(len).ok_or(libc::EFAULT)?;
        if end > m.iova + m.size || (write && !m.write) || (!write && !m.read) {
            return Err(libc::EFAULT);
        }
        Ok(m.vaddr + (iova - m.iova))
    }
}

impl DmaAccess for SentMaps {
    fn dma_read(&self, iova: u64, buf: &mut [u8]) -> Result<(), i32> {
        let va = self.translate(iova, buf.len() as u64, false)?;
        barmap::os::copy_from_user(va as *const u8, buf).map_err(|_| libc::EFAULT)
    }

    fn dma_write(&self, iova: u64, data: &[u8]) -> Result<(), i32> {
        let va = self.translate(iova, data.len() as u64, true)?;
        barmap::os::copy_to_user(data, va as *mut u8).map_err(|_| libc::EFAULT)
    }
}

/// A device served over vfio-user.
#[derive(Debug)]
pub struct RemoteDevice {
    remote: Arc<Remote>,
    sent: Arc<SentMaps>,
    /// The register trap's side: a device whose register BARs are the
    /// server's, built at the first mapping that needs it.
    proxy: OnceLock<Result<ModelDevice, Errno>>,
    /// Which BARs are offered for mmap, when the run knows (a device of
    /// barmap's own server); None: every BAR.
    mmap_bars: Option<[bool; 6]>,
}

/// A BAR mapping of a device served over vfio-user.
#[derive(Debug)]
pub enum RemoteMapping {
    /// The server's file, mapped by the kernel at this address.
    File(usize),
    /// Trapped (with the server's file mapped over the parts it offers):
    /// dropping it unmaps it.
    Trapped(ModelMapping),
}

/// The BARs of a vfio-user device as a device model whose every register
/// access is a `REGION_READ` or `REGION_WRITE` of the server's: what the
/// register trap calls for an access through a trapped mapping. A read the
/// server refuses reads all ones (as a PCI read nobody answers), a refused
/// write is dropped; both are logged.
#[derive(Debug)]
pub struct RegisterProxy {
    remote: Arc<Remote>,
}

/// `VFIO_PCI_VGA_REGION_INDEX`: the region after config space.
const VGA_REGION: u32 = v::VFIO_PCI_CONFIG_REGION_INDEX + 1;

/// The smallest register BAR barmap maps: one page.
const PROXY_MIN: u64 = 4096;

impl DeviceModel for RegisterProxy {
    fn layout(&self) -> Layout {
        let mut layout = Layout::new(0, 0);
        for i in 0..6 {
            if let Some(r) = self.remote.region(i).filter(|r| r.size > 0) {
                let size = r.size.next_power_of_two().max(PROXY_MIN);
                layout = layout.region(
                    i,
                    RegionKind::Registers {
                        size,
                        mmap: true,
                        bits64: false,
                    },
                );
            }
        }
        layout
    }

    fn read(&mut self, _: &mut Ctx<'_>, region: u32, offset: u64, width: Width) -> u64 {
        let mut b = [0u8; 8];
        match self.remote.read(region, offset, &mut b[..width.bytes()]) {
            Ok(()) => u64::from_le_bytes(b),
            Err(e) => {
                tracing::warn!(region, offset, error = %e, "trapped read of a vfio-user BAR refused");
                u64::MAX
            }
        }
    }

    fn write(&mut self, _: &mut Ctx<'_>, region: u32, offset: u64, width: Width, value: u64) {
        let b = value.to_le_bytes();
        if let Err(e) = self.remote.write(region, offset, &b[..width.bytes()]) {
            tracing::warn!(region, offset, error = %e, "trapped write of a vfio-user BAR refused");
        }
    }

    fn write64(
        &mut self,
        _: &mut Ctx<'_>,
        region: u32,
        offset: u64,
        data: &[u8; 64],
        how: barmap_models::Store64,
    ) -> bool {
        use barmap_client::proto::ext::Store64Insn;
        let insn = match how {
            barmap_models::Store64::Movdir64b => Store64Insn::Movdir64b,
            barmap_models::Store64::Enqcmd => Store64Insn::Enqcmd,
            barmap_models::Store64::Enqcmds => Store64Insn::Enqcmds,
        };
        match self.remote.write64(region, offset, data, insn) {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(region, offset, error = %e, "trapped 64-byte store to a vfio-user BAR refused");
                false
            }
        }
    }

    fn reset(&mut self) {}
}

fn errno(e: barmap_client::Error) -> Errno {
    tracing::debug!(error = %e, "vfio-user request failed");
    Errno(e.errno())
}

impl RemoteDevice {
    /// Connects to the server at `socket`.
    pub fn connect(socket: &str) -> barmap::Result<RemoteDevice> {
        let sent: Arc<SentMaps> = Arc::default();
        let remote = Remote::connect(Path::new(socket), sent.clone()).map_err(|e| {
            tracing::error!(socket, error = %e, "connecting to the vfio-user server failed");
            barmap::Error::Os {
                op: "connecting to the vfio-user server",
                errno: e.errno(),
            }
        })?;
        if remote.info().flags & v::VFIO_DEVICE_FLAGS_PCI == 0 {
            return Err(barmap::Error::InvalidSpec(format!(
                "{socket}: the vfio-user server's device is not a PCI device"
            )));
        }
        Ok(RemoteDevice {
            remote: Arc::new(remote),
            sent,
            proxy: OnceLock::new(),
            mmap_bars: None,
        })
    }

    /// Offers for mmap only the BARs marked in `bars` (a device of barmap's
    /// own server, whose model the run knows).
    pub fn set_mmap_bars(&mut self, bars: [bool; 6]) {
        self.mmap_bars = Some(bars);
    }

    /// The register trap's device, built once: memory decoding on (the
    /// server keeps the device's real COMMAND register; revoking is its).
    fn proxy(&self) -> Result<&ModelDevice, Errno> {
        self.proxy
            .get_or_init(|| {
                let model = RegisterProxy {
                    remote: self.remote.clone(),
                };
                let dev = ModelDevice::builder_boxed(Box::new(model))
                    .build()
                    .map_err(|e| crate::device::errno_of(&e))?;
                dev.write_config(pci::COMMAND, &pci::COMMAND_MEMORY.to_le_bytes())
                    .map_err(|e| crate::device::errno_of(&e))?;
                Ok(dev)
            })
            .as_ref()
            .map_err(|e| *e)
    }

    /// The protocol client underneath.
    pub fn client(&self) -> &Remote {
        &self.remote
    }

    /// Vectors per interrupt index (INTx, MSI, MSI-X, ERR, REQ) as the
    /// server has them.
    pub fn irq_counts(&self) -> [u32; 5] {
        std::array::from_fn(|i| self.remote.irq(i as u32).map_or(0, |q| q.count))
    }

    /// `VFIO_DEVICE_GET_IRQ_INFO`'s flags for `index`, the server's.
    pub fn irq_flags(&self, index: u32) -> u32 {
        self.remote.irq(index).map_or(0, |q| q.flags)
    }

    /// Config space's size, as the server gives it.
    pub fn config_size(&self) -> u64 {
        self.remote
            .region(v::VFIO_PCI_CONFIG_REGION_INDEX)
            .map_or(0, |r| r.size)
    }

    /// `VFIO_DEVICE_GET_REGION_INFO`: the server's description, at the
    /// region's offset in the device fd (`index << 40`), with the
    /// sparse-mmap capability for a region mappable only in parts.
    pub fn get_region_info(&self, arg: usize) -> Result<i64, Errno> {
        const MINSZ: usize = 32;
        let mut info: v::VfioRegionInfo = user::read_struct(arg, MINSZ)?;
        if (info.argsz as usize) < MINSZ || info.index >= v::VFIO_PCI_NUM_REGIONS {
            return Err(Errno::EINVAL);
        }
        let region = self.remote.region(info.index).ok_or(Errno::EINVAL)?;
        if info.index == VGA_REGION && region.size == 0 {
            // No VGA: vfio-pci's EINVAL.
            return Err(Errno::EINVAL);
        }
        info.offset = u64::from(info.index) << v::VFIO_PCI_OFFSET_SHIFT;
        info.size = region.size;
        info.cap_offset = 0;
        let rw = v::VFIO_REGION_INFO_FLAG_READ | v::VFIO_REGION_INFO_FLAG_WRITE;
        info.flags = region.flags & rw;
        let mut caps: Vec<u8> = Vec::new();
        let mappable = self
            .mmap_bars
            .is_none_or(|m| m.get(info.index as usize) == Some(&true));
        if info.index < 6 && region.size > 0 && info.flags != 0 && mappable {
            // Every BAR maps: the server's file where it offers one, the
            // register trap elsewhere. The sparse areas say where the
            // accesses are direct. (A device of barmap's own server maps
            // the BARs its model maps, as in-process.)
            info.flags |= v::VFIO_REGION_INFO_FLAG_MMAP;
            let whole = region
                .areas
                .iter()
                .any(|&(s, n)| s == 0 && n >= region.size);
            if region.fd.is_some() && !whole {
                caps = crate::device::sparse_mmap_cap(region.areas.iter().copied());
            }
        }
        crate::device::put_region_info(arg, info, &caps)
    }

    /// `pread`/`pwrite` of `len` bytes at `at` in region `index`, as
    /// `REGION_READ`/`REGION_WRITE`: config space is cut at its end (0
    /// past it), a BAR access past the end is EINVAL and a longer one is
    /// cut, as vfio-pci's `vfio_pci_bar_rw` does.
    pub fn rw(
        &self,
        index: u32,
        at: u64,
        buf: usize,
        len: usize,
        write: bool,
    ) -> Result<i64, Errno> {
        if index >= v::VFIO_PCI_NUM_REGIONS {
            return Err(Errno::EINVAL);
        }
        let region = self.remote.region(index).ok_or(Errno::EINVAL)?;
        let needed = if write {
            v::VFIO_REGION_INFO_FLAG_WRITE
        } else {
            v::VFIO_REGION_INFO_FLAG_READ
        };
        if region.flags & needed == 0 {
            return Err(Errno::EINVAL);
        }
        if at >= region.size {
            return if index == v::VFIO_PCI_CONFIG_REGION_INDEX {
                Ok(0)
            } else {
                Err(Errno::EINVAL)
            };
        }
        let n = len.min((region.size - at) as usize);
        if write {
            let data = user::read(buf, n)?;
            if n > 0 {
                self.remote.write(index, at, &data).map_err(errno)?;
            }
        } else {
            let mut data = vec![0u8; n];
            if n > 0 {
                self.remote.read(index, at, &mut data).map_err(errno)?;
            }
            user::write(buf, &data)?;
        }
        Ok(n as i64)
    }

    /// `mmap` of `len` bytes at `at` in BAR `index`, at the program's
    /// address (with its `MAP_FIXED` or `MAP_FIXED_NOREPLACE`): inside one
    /// of the server's areas, its file, `MAP_SHARED`; otherwise a trapped
    /// mapping with the file mapped over the parts inside its areas.
    /// EINVAL without `MAP_SHARED`, for an empty region or one that is
    /// neither readable nor writable.
    pub fn mmap(
        &self,
        addr: usize,
        len: usize,
        prot: i32,
        flags: i32,
        index: u32,
        at: u64,
    ) -> Result<RemoteMapping, Errno> {
        if flags & libc::MAP_SHARED == 0 || index >= 6 || len == 0 {
            return Err(Errno::EINVAL);
        }
        let region = self.remote.region(index).ok_or(Errno::EINVAL)?;
        let len = len.next_multiple_of(4096);
        let rw = v::VFIO_REGION_INFO_FLAG_READ | v::VFIO_REGION_INFO_FLAG_WRITE;
        if region.size == 0 || region.flags & rw == 0 {
            return Err(Errno::EINVAL);
        }
        let keep = libc::MAP_FIXED | libc::MAP_FIXED_NOREPLACE | libc::MAP_POPULATE;
        if region.mappable(at, len as u64) {
            let fd = region.fd.as_ref().ok_or(Errno::EINVAL)?;
            let off = region.offset.checked_add(at).ok_or(Errno::EINVAL)?;
            return map_file(addr, len, prot, libc::MAP_SHARED | (flags & keep), fd, off)
                .map(RemoteMapping::File);
        }
        let fixed = flags & (libc::MAP_FIXED | libc::MAP_FIXED_NOREPLACE) != 0;
        let placement = if fixed {
            Placement::Fixed(addr)
        } else {
            Placement::Anywhere
        };
        let bprot = if prot & libc::PROT_WRITE != 0 {
            Prot::ReadWrite
        } else {
            Prot::Read
        };
        let trapped = self
            .proxy()?
            .map(index, at, len, bprot, placement)
            .map_err(|e| crate::device::errno_of(&e))?;
        if let Some(fd) = region.fd.as_ref() {
            // The server's file over the parts it offers (whole pages).
            let end = at + len as u64;
            for &(s, n) in &region.areas {
                let a = s.max(at).next_multiple_of(4096);
                let e = (s + n).min(end) & !4095;
                if a >= e {
                    continue;
                }
                let place = trapped.addr() + (a - at) as usize;
                map_file(
                    place,
                    (e - a) as usize,
                    prot,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    fd,
                    region.offset + a,
                )?;
            }
        }
        // A fork keeps the mapping, as it keeps vfio-pci's vma (which is
        // not VM_DONTCOPY): the child's copy stays inaccessible, and its
        // first access there maps it again through the child's own
        // connection ([`crate::Front`]'s inherited mappings).
        // SAFETY: madvise of the range just mapped, which is ours.
        unsafe {
            libc::madvise(
                trapped.addr() as *mut libc::c_void,
                trapped.len(),
                libc::MADV_DOFORK,
            )
        };
        Ok(RemoteMapping::Trapped(trapped))
    }

    /// `VFIO_DEVICE_SET_IRQS`: vfio-pci's checks ([`Irqs::set`], which
    /// records the request), then the request to the server with the
    /// program's eventfds. If the server refuses, the record is put back.
    pub fn set_irqs(&self, irqs: &Arc<Mutex<Irqs>>, arg: usize) -> Result<i64, Errno> {
        const MINSZ: usize = 20;
        let hdr: v::VfioIrqSet = user::read_struct(arg, MINSZ)?;
        let mut local = irqs.lock().unwrap();
        let r = local.set(arg)?;
        let data_type = hdr.flags & v::VFIO_IRQ_SET_DATA_TYPE_MASK;
        let count = hdr.count as usize;
        let (data, fds): (Vec<u8>, Vec<i32>) = match data_type {
            v::VFIO_IRQ_SET_DATA_BOOL => (user::read(arg + MINSZ, count)?, Vec::new()),
            v::VFIO_IRQ_SET_DATA_EVENTFD => {
                let raw = user::read(arg + MINSZ, 4 * count)?;
                let fds = raw
                    .chunks_exact(4)
                    .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                    .collect();
                (Vec::new(), fds)
            }
            _ => (Vec::new(), Vec::new()),
        };
        self.remote
            .set_irqs(hdr.flags, hdr.index, hdr.start, hdr.count, &data, &fds)
            .map_err(|e| {
                // The server refused: nothing is enabled on its side; the
                // local record follows (all of the index's vectors off).
                local.clear_index(hdr.index);
                errno(e)
            })?;
        Ok(r)
    }

    /// The last device fd closed: every index's vectors off at the server
    /// (`DATA_NONE | ACTION_TRIGGER`, count 0), as vfio-pci's release
    /// disables interrupts.
    pub fn release_irqs(&self) {
        let flags = v::VFIO_IRQ_SET_DATA_NONE | v::VFIO_IRQ_SET_ACTION_TRIGGER;
        for (index, count) in self.irq_counts().into_iter().enumerate() {
            if count == 0 {
                continue;
            }
            if let Err(e) = self.remote.set_irqs(flags, index as u32, 0, 0, &[], &[]) {
                tracing::debug!(index, error = %e, "vfio-user: disabling interrupts at release");
            }
        }
    }

    /// `VFIO_DEVICE_RESET`: `DEVICE_RESET`.
    pub fn reset(&self) -> Result<(), Errno> {
        self.remote.reset().map_err(errno)
    }

    /// A DMA mapping of the table the device is attached to, sent as
    /// `DMA_MAP`: with the file behind the memory when there is one.
    pub fn dma_map(&self, m: &DmaMapping) -> Result<(), Errno> {
        let file = backing_file(m.vaddr, m.size);
        let fd = file.as_ref().map(|(f, off)| (f, *off));
        // Known before the server hears of it: it may DMA at once.
        self.sent.maps.lock().unwrap().insert(m.iova, *m);
        self.remote
            .dma_map(m.iova, m.size, m.read, m.write, fd)
            .map_err(|e| {
                self.sent.maps.lock().unwrap().remove(&m.iova);
                errno(e)
            })
    }

    /// `DMA_UNMAP` of `size` bytes at `iova`.
    pub fn dma_unmap(&self, iova: u64, size: u64) {
        if let Err(e) = self.remote.dma_unmap(iova, size) {
            tracing::warn!(iova, size, error = %e, "vfio-user DMA_UNMAP failed");
        }
        // Forgotten once the server let go of it.
        let mut sent = self.sent.maps.lock().unwrap();
        let end = iova.saturating_add(size);
        sent.retain(|&k, m| !(k >= iova && k + m.size <= end));
    }
}

impl RemoteDevice {
    /// `DMA_UNMAP` of the window of exactly `size` bytes at `iova`, which
    /// another process sharing the IOAS may have mapped (barmap's
    /// `DMA_UNMAP_ANY`); nothing if no window is exactly that.
    pub fn dma_unmap_any(&self, iova: u64, size: u64) {
        if let Err(e) = self.remote.dma_unmap_any(iova, size) {
            tracing::debug!(iova, size, error = %e, "DMA_UNMAP_ANY failed");
        }
        let mut sent = self.sent.maps.lock().unwrap();
        if sent.get(&iova).is_some_and(|m| m.size == size) {
            sent.remove(&iova);
        }
    }
}

/// The file behind `vaddr..vaddr+size` of this process and the offset of
/// `vaddr` in it, if the range lies in one shared file mapping (memfd,
/// `MAP_SHARED|MAP_ANONYMOUS`, hugetlbfs, shmem): opened through
/// `/proc/self/map_files`, so the server maps the same pages the program
/// has, and keeps them after the program unmaps its own mapping, as the
/// kernel's pinning does.
pub fn backing_file(vaddr: u64, size: u64) -> Option<(OwnedFd, u64)> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let end = vaddr.checked_add(size)?;
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (range, perms, offset) = (f.next()?, f.next()?, f.next()?);
        let (s, e) = range.split_once('-')?;
        let (s, e) = (
            u64::from_str_radix(s, 16).ok()?,
            u64::from_str_radix(e, 16).ok()?,
        );
        if !(s <= vaddr && vaddr < e) {
            continue;
        }
        if end > e || perms.as_bytes().get(3) != Some(&b's') {
            return None;
        }
        let pgoff = u64::from_str_radix(offset, 16).ok()?;
        let writable = perms.as_bytes().get(1) == Some(&b'w');
        let path = format!("/proc/self/map_files/{range}\0");
        let mode = if writable {
            libc::O_RDWR
        } else {
            libc::O_RDONLY
        };
        // SAFETY: opens a NUL-terminated path; the result is checked.
        let fd = unsafe { libc::open(path.as_ptr().cast(), mode | libc::O_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        // SAFETY: a fresh fd owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if is_hugetlbfs(&fd) {
            // hugetlbfs has no write(2): a server that reaches DMA windows
            // with pread/pwrite could not write there. Its DMA goes by
            // message to this process instead.
            return None;
        }
        return Some((fd, pgoff + (vaddr - s)));
    }
    None
}

/// The parts of `start..end` that this process still has mapped as shared
/// mappings, as maximal runs of adjacent mappings (from `/proc/self/maps`):
/// what is left, in a forked child, of a BAR mapping its parent made.
pub(crate) fn shared_runs(start: usize, end: usize) -> Vec<(usize, usize)> {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return Vec::new();
    };
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        let Some((s, e)) = range.split_once('-') else {
            continue;
        };
        let (Ok(s), Ok(e)) = (usize::from_str_radix(s, 16), usize::from_str_radix(e, 16)) else {
            continue;
        };
        let (s, e) = (s.max(start), e.min(end));
        if s >= e || perms.as_bytes().get(3) != Some(&b's') {
            continue;
        }
        match runs.last_mut() {
            Some(last) if last.1 == s => last.1 = e,
            _ => runs.push((s, e)),
        }
    }
    runs
}

/// Whether `fd` is a file on hugetlbfs.
fn is_hugetlbfs(fd: &OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;
    // SAFETY: a zeroed statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs writes one struct statfs.
    let rc = unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) };
    rc == 0 && st.f_type as i64 == HUGETLBFS_MAGIC
}

/// `mmap(addr, len, prot, flags, fd, off)`: the address, or the errno.
fn map_file(
    addr: usize,
    len: usize,
    prot: i32,
    flags: i32,
    fd: &OwnedFd,
    off: u64,
) -> Result<usize, Errno> {
    use std::os::fd::AsRawFd;
    // SAFETY: maps the server's file where the program asked (a fixed
    // placement replaces only what the program itself named, as its own
    // mmap call would); nothing of barmap's lives there.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            prot,
            flags,
            fd.as_raw_fd(),
            off as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Errno(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EINVAL),
        ));
    }
    Ok(p as usize)
}

/// What the vfio-user server at `socket` says of its device, for the sysfs
/// view before the program starts (`barmap run --server`): IDs from its
/// config space, BAR sizes from its region info, prefetchable from the BAR
/// registers. One connection, closed before returning.
pub fn ask_ids(socket: &Path) -> Result<crate::spec::ServedIds, String> {
    let remote = Remote::connect(socket, Arc::new(barmap_client::NoDma))
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    let mut cfg = [0u8; 0x28];
    remote
        .read(v::VFIO_PCI_CONFIG_REGION_INDEX, 0, &mut cfg)
        .map_err(|e| format!("{}: config space: {e}", socket.display()))?;
    let u16_at = |o: usize| u16::from_le_bytes([cfg[o], cfg[o + 1]]);
    let mut ids = crate::spec::ServedIds {
        vendor: u16_at(0),
        device: u16_at(2),
        revision: cfg[8],
        class: u32::from_le_bytes([cfg[9], cfg[10], cfg[11], 0]),
        ..Default::default()
    };
    for i in 0..6 {
        ids.bars[i] = remote.region(i as u32).map_or(0, |r| r.size);
        let bar = u32::from_le_bytes(cfg[0x10 + 4 * i..0x14 + 4 * i].try_into().unwrap());
        ids.prefetchable[i] = bar & 1 == 0 && bar & 8 != 0;
    }
    Ok(ids)
}
