//! The device fd: `VFIO_DEVICE_GET_INFO`, `GET_REGION_INFO` with its
//! capability chain, `GET_IRQ_INFO`, `SET_IRQS`, `RESET`, region access
//! with `pread`/`pwrite` at `index << 40 | offset`, and `mmap` of BARs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use barmap::{Device, Error, Placement, Prot};
use barmap_models::{DmaSide, Host, IrqIndex, ModelDevice, ModelMapping};
use barmap_vfio::uapi as v;

use crate::dma::{DmaTable, SpanFault};
use crate::irq::{self, Irqs};
use crate::spec::DeviceSpec;
use crate::{user, Errno};

pub use barmap_models::IommuFault;

/// The BAR that holds the default model's MSI-X table.
pub const MSIX_BAR: u32 = 0;

/// Config space size of a conventional emulated function (a model with
/// extended config space has 4096, see [`EmuDevice::config_size`]).
pub const CONFIG_SIZE: u64 = 256;
const OFFSET_MASK: u64 = (1 << v::VFIO_PCI_OFFSET_SHIFT) - 1;

/// The IOMMU table a device is attached to, if any.
pub type DmaSlot = Arc<Mutex<Option<Arc<Mutex<DmaTable>>>>>;

/// An emulated device as the front end presents it.
#[derive(Debug)]
pub struct EmuDevice {
    /// Its description (model, address, group, cdev).
    pub spec: DeviceSpec,
    /// What serves the device: an in-process model, or a vfio-user
    /// server.
    pub backend: Backend,
    /// Interrupt eventfds.
    pub irqs: Arc<Mutex<Irqs>>,
    /// The IOMMU table the device is attached to, if any.
    pub dma: DmaSlot,
    /// A device fd of it is open (vfio-pci allows one open per device
    /// through the group and the cdev together).
    pub open: Mutex<u32>,
    /// IOMMU faults of its DMA.
    pub iommu_faults: Arc<FaultCounts>,
    /// The testbed of the run that presents it (SR-IOV state: the VF
    /// token, open VFs), once the front end has built it.
    pub testbed: std::sync::OnceLock<std::path::PathBuf>,
}

/// IOMMU faults of one device's DMA, by kind (the run's report lists
/// them under `iommu_faults`).
#[derive(Debug, Default)]
pub struct FaultCounts {
    /// DMA with no IOMMU table attached.
    pub no_domain: AtomicU64,
    /// DMA to an IOVA no mapping covers.
    pub unmapped: AtomicU64,
    /// DMA against a mapping's permissions.
    pub permission: AtomicU64,
    /// DMA to private memory the program unmapped after mapping it for
    /// DMA (see [`crate::dma`]), or whose pages could not be reached.
    pub gone: AtomicU64,
}

impl FaultCounts {
    fn count(&self, f: &IommuFault) {
        let c = match f {
            IommuFault::NoDomain => &self.no_domain,
            IommuFault::Unmapped { .. } => &self.unmapped,
            IommuFault::Permission { .. } => &self.permission,
            IommuFault::Gone { .. } => &self.gone,
            IommuFault::BusMasterDisabled => return,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts as a JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "no_domain": n(&self.no_domain),
            "unmapped": n(&self.unmapped),
            "permission": n(&self.permission),
            "gone": n(&self.gone),
        })
    }
}

/// The front end as a device model's surroundings: the eventfds of
/// `VFIO_DEVICE_SET_IRQS` and the IOMMU table of the device's container
/// or IOAS.
#[derive(Debug)]
struct FrontHost {
    irqs: Arc<Mutex<Irqs>>,
    dma: DmaSlot,
    faults: Arc<FaultCounts>,
}

fn index_of(i: IrqIndex) -> u32 {
    match i {
        IrqIndex::Intx => v::VFIO_PCI_INTX_IRQ_INDEX,
        IrqIndex::Msi => v::VFIO_PCI_MSI_IRQ_INDEX,
        IrqIndex::Msix => v::VFIO_PCI_MSIX_IRQ_INDEX,
    }
}

impl FrontHost {
    /// The process ranges behind a DMA access, which may run across
    /// IOVA-contiguous mappings (see [`DmaTable::translate_spans`]); a
    /// fault names the access, as a single-mapping one does.
    fn translate(&self, iova: u64, len: u64, write: bool) -> Result<Vec<(u64, u64)>, IommuFault> {
        let dma = self.dma.lock().unwrap();
        let table = dma.as_ref().ok_or(IommuFault::NoDomain)?.lock().unwrap();
        table
            .translate_spans(iova, len, write)
            .map_err(|f| match f {
                // Private memory the program unmapped after mapping it for
                // DMA: the kernel would still reach the pinned pages; barmap
                // has none to reach (see crate::dma).
                SpanFault::Gone { .. } => IommuFault::Gone { iova },
                SpanFault::Permission { .. } => IommuFault::Permission { iova, write },
                SpanFault::Unmapped { .. } => IommuFault::Unmapped { iova, len },
            })
    }
}

impl Host for FrontHost {
    fn signal(&self, index: IrqIndex, vector: u32) -> bool {
        self.irqs.lock().unwrap().raise(index_of(index), vector)
    }

    fn enabled(&self, index: IrqIndex) -> bool {
        self.irqs.lock().unwrap().is_enabled(index_of(index))
    }

    fn set_intx(&self, level: bool) {
        self.irqs.lock().unwrap().set_intx(level);
    }

    fn dma_read(&self, iova: u64, buf: &mut [u8]) -> Result<(), IommuFault> {
        let r = self.raw_read(iova, buf);
        if let Err(f) = &r {
            self.faults.count(f);
        }
        r
    }

    fn dma_write(&self, iova: u64, data: &[u8]) -> Result<(), IommuFault> {
        let r = self.raw_write(iova, data);
        if let Err(f) = &r {
            self.faults.count(f);
        }
        r
    }

    fn dma_copy(&self, src: u64, dst: u64, len: u64) -> Result<(), (DmaSide, IommuFault)> {
        let r = self.raw_copy(src, dst, len);
        if let Err((_, f)) = &r {
            self.faults.count(f);
        }
        r
    }
}

impl FrontHost {
    fn raw_read(&self, iova: u64, buf: &mut [u8]) -> Result<(), IommuFault> {
        let mut at = 0usize;
        for (va, n) in self.translate(iova, buf.len() as u64, false)? {
            let part = &mut buf[at..at + n as usize];
            barmap::os::copy_from_user(va as *const u8, part)
                .map_err(|_| IommuFault::Gone { iova })?;
            at += n as usize;
        }
        Ok(())
    }

    fn raw_write(&self, iova: u64, data: &[u8]) -> Result<(), IommuFault> {
        let mut at = 0usize;
        for (va, n) in self.translate(iova, data.len() as u64, true)? {
            let part = &data[at..at + n as usize];
            barmap::os::copy_to_user(part, va as *mut u8).map_err(|_| IommuFault::Gone { iova })?;
            at += n as usize;
        }
        Ok(())
    }

    /// In place: both IOVAs translated, then one copy by the kernel from
    /// the source's pages to the destination's (no bounce buffer). If the
    /// kernel refuses it (memory behind a mapping gone), the bounce finds
    /// out which side it was.
    fn raw_copy(&self, src: u64, dst: u64, len: u64) -> Result<(), (DmaSide, IommuFault)> {
        if len == 0 {
            return Ok(());
        }
        let from = self
            .translate(src, len, false)
            .map_err(|f| (DmaSide::Read, f))?;
        let to = self
            .translate(dst, len, true)
            .map_err(|f| (DmaSide::Write, f))?;
        // One range each side: in place; across mappings: the bounce.
        let direct = match (from.as_slice(), to.as_slice()) {
            ([(from, _)], [(to, _)]) => {
                barmap::os::probe(*to as usize, *from as *mut u8, len as usize, true)
            }
            _ => Err(0),
        };
        match direct {
            Ok(()) => Ok(()),
            Err(_) => {
                let mut buf = vec![0u8; len as usize];
                self.raw_read(src, &mut buf)
                    .map_err(|f| (DmaSide::Read, f))?;
                self.raw_write(dst, &buf).map_err(|f| (DmaSide::Write, f))?;
                Ok(())
            }
        }
    }
}

/// Which BARs of a device that barmap's own server serves are mmappable,
/// as they are in-process: the model's word when the run knows the model
/// (`--shared`), else (`--server`) every BAR of a page or more.
fn served_mmap_bars(spec: &DeviceSpec) -> [bool; 6] {
    let mut out = [false; 6];
    match spec.model().ok().map(|m| m.layout()) {
        Some(layout) => {
            for (i, kind) in &layout.regions {
                if let Some(slot) = out.get_mut(*i as usize) {
                    *slot = match kind {
                        barmap_models::RegionKind::Memory(r) => r.flags.mmap,
                        barmap_models::RegionKind::Registers { mmap, .. } => *mmap,
                    };
                }
            }
        }
        None => {
            let bars = spec.served_ids.as_ref().map(|i| i.bars).unwrap_or_default();
            for (slot, size) in out.iter_mut().zip(bars) {
                *slot = size >= 4096;
            }
        }
    }
    out
}

impl EmuDevice {
    /// Builds the device of `spec` and connects its model to the front
    /// end's eventfds and IOMMU tables; a device served over vfio-user is
    /// connected to its server instead.
    pub fn new(spec: DeviceSpec) -> barmap::Result<EmuDevice> {
        let dma: DmaSlot = Arc::default();
        let iommu_faults: Arc<FaultCounts> = Arc::default();
        if let Some(socket) = spec.remote_socket() {
            let mut remote = crate::remote::RemoteDevice::connect(socket)?;
            if spec.served.is_some() {
                remote.set_mmap_bars(served_mmap_bars(&spec));
            }
            let irqs = Arc::new(Mutex::new(Irqs::served(remote.irq_counts())));
            return Ok(EmuDevice {
                backend: Backend::Remote(remote),
                spec,
                irqs,
                dma,
                open: Mutex::new(0),
                iommu_faults,
                testbed: std::sync::OnceLock::new(),
            });
        }
        let model = spec.build()?;
        let layout = model.layout();
        let intx = u32::from(layout.intx || spec.model == "default");
        let irqs = Arc::new(Mutex::new(Irqs::new([
            intx,
            u32::from(layout.interrupts.msi_vectors),
            u32::from(layout.interrupts.msix_vectors),
            1,
            1,
        ])));
        model.set_host(Arc::new(FrontHost {
            irqs: irqs.clone(),
            dma: dma.clone(),
            faults: iommu_faults.clone(),
        }));
        Ok(EmuDevice {
            backend: Backend::Model(model),
            spec,
            irqs,
            dma,
            open: Mutex::new(0),
            iommu_faults,
            testbed: std::sync::OnceLock::new(),
        })
    }

    /// The device model, for a device served in-process.
    pub fn model(&self) -> Option<&ModelDevice> {
        match &self.backend {
            Backend::Model(m) => Some(m),
            Backend::Remote(_) => None,
        }
    }

    /// The vfio-user connection, for a device served over vfio-user.
    pub fn remote(&self) -> Option<&crate::remote::RemoteDevice> {
        match &self.backend {
            Backend::Model(_) => None,
            Backend::Remote(r) => Some(r),
        }
    }

    /// Attaches the device to an IOMMU table, or detaches it (`None`): a
    /// device served over vfio-user gets the table's mappings as
    /// `DMA_MAP` messages, and follows its maps and unmaps from then on.
    pub fn attach(self: &Arc<Self>, table: Option<Arc<Mutex<DmaTable>>>) {
        let mut slot = self.dma.lock().unwrap();
        if let Some(r) = self.remote() {
            if let Some(old) = slot.as_ref() {
                if table.as_ref().is_none_or(|t| !Arc::ptr_eq(t, old)) {
                    old.lock().unwrap().detach_remote(r);
                }
            }
            if let Some(new) = table.as_ref() {
                if slot.as_ref().is_none_or(|o| !Arc::ptr_eq(o, new)) {
                    new.lock().unwrap().attach_remote(self);
                }
            }
        }
        *slot = table;
    }

    /// barmap's device underneath, for a device served in-process.
    pub fn device(&self) -> Option<&Device> {
        self.model().map(ModelDevice::device)
    }

    /// A device model's DMA read of `buf.len()` bytes at `iova`, through
    /// the IOMMU table the device is attached to.
    pub fn dma_read(&self, iova: u64, buf: &mut [u8]) -> Result<(), IommuFault> {
        self.host().dma_read(iova, buf)
    }

    /// A device model's DMA write of `data` at `iova`.
    pub fn dma_write(&self, iova: u64, data: &[u8]) -> Result<(), IommuFault> {
        self.host().dma_write(iova, data)
    }

    /// Config space's size: 256 bytes, or 4096 for a model with extended
    /// config space.
    pub fn config_size(&self) -> u64 {
        match &self.backend {
            Backend::Model(m) => m.config_size(),
            Backend::Remote(r) => r.config_size(),
        }
    }

    /// `VFIO_DEVICE_SET_IRQS`: the eventfds, and, for MSI-X, the emulated
    /// table's mask bits as the host kernel leaves them (a vector with an
    /// eventfd unmasked, one without masked).
    pub fn set_irqs(&self, arg: usize) -> Result<i64, Errno> {
        let model = match &self.backend {
            Backend::Model(m) => m,
            Backend::Remote(r) => return r.set_irqs(&self.irqs, arg),
        };
        let mut irqs = self.irqs.lock().unwrap();
        let r = irqs.set(arg)?;
        let n = irqs.count(v::VFIO_PCI_MSIX_IRQ_INDEX);
        let on: Vec<bool> = (0..n)
            .map(|k| irqs.has_trigger(v::VFIO_PCI_MSIX_IRQ_INDEX, k))
            .collect();
        drop(irqs);
        for (k, enabled) in on.into_iter().enumerate() {
            model.set_msix_masked(k as u32, !enabled);
        }
        Ok(r)
    }

    fn host(&self) -> FrontHost {
        FrontHost {
            irqs: self.irqs.clone(),
            dma: self.dma.clone(),
            faults: self.iommu_faults.clone(),
        }
    }
}

/// What serves a device's regions, config space, interrupts and DMA.
#[derive(Debug)]
pub enum Backend {
    /// An in-process device model: BARs, config space, the fault path,
    /// register callbacks.
    Model(ModelDevice),
    /// A device served by a vfio-user server ([`crate::remote`]).
    Remote(crate::remote::RemoteDevice),
}

/// errno for a barmap error, as vfio-pci answers the same request.
pub fn errno_of(e: &Error) -> Errno {
    match e {
        Error::MemoryDisabled => Errno::EIO,
        Error::BadBuffer { .. } | Error::Fault { .. } => Errno::EFAULT,
        Error::ReadOnly(_) => Errno::EACCES,
        Error::DeviceGone => Errno::ENODEV,
        // The device memory limit: what shmem answers when it cannot
        // allocate (the kernel's vfio-pci never needs to).
        Error::MemoryLimit { .. } => Errno(libc::ENOMEM),
        Error::Os { errno, .. } => Errno(*errno),
        _ => Errno::EINVAL,
    }
}

fn region_of(off: u64) -> (u32, u64) {
    ((off >> v::VFIO_PCI_OFFSET_SHIFT) as u32, off & OFFSET_MASK)
}

/// `VFIO_DEVICE_GET_INFO`.
pub fn get_info(arg: usize) -> Result<i64, Errno> {
    const MINSZ: usize = 16;
    let mut info: v::VfioDeviceInfo = user::read_struct(arg, MINSZ)?;
    if (info.argsz as usize) < MINSZ {
        return Err(Errno::EINVAL);
    }
    info.flags = v::VFIO_DEVICE_FLAGS_PCI | v::VFIO_DEVICE_FLAGS_RESET;
    info.num_regions = v::VFIO_PCI_NUM_REGIONS;
    info.num_irqs = v::VFIO_PCI_NUM_IRQS;
    let len = (info.argsz as usize).min(std::mem::size_of::<v::VfioDeviceInfo>());
    info.cap_offset = 0;
    user::write_struct(arg, &info, len)?;
    Ok(0)
}

/// `VFIO_DEVICE_GET_REGION_INFO`, with the sparse-mmap capability for a
/// BAR that is mappable only in parts (around an MSI-X table).
pub fn get_region_info(dev: &EmuDevice, arg: usize) -> Result<i64, Errno> {
    let model = match &dev.backend {
        Backend::Model(m) => m,
        Backend::Remote(r) => return r.get_region_info(arg),
    };
    const MINSZ: usize = 32;
    let mut info: v::VfioRegionInfo = user::read_struct(arg, MINSZ)?;
    if (info.argsz as usize) < MINSZ {
        return Err(Errno::EINVAL);
    }
    if info.index >= v::VFIO_PCI_NUM_REGIONS {
        return Err(Errno::EINVAL);
    }
    info.offset = u64::from(info.index) << v::VFIO_PCI_OFFSET_SHIFT;
    info.cap_offset = 0;
    let mut caps: Vec<u8> = Vec::new();
    match info.index {
        v::VFIO_PCI_CONFIG_REGION_INDEX => {
            info.size = dev.config_size();
            info.flags = v::VFIO_REGION_INFO_FLAG_READ | v::VFIO_REGION_INFO_FLAG_WRITE;
        }
        i if i < 6 => match model.device().region_info(i) {
            Some(r) => {
                info.size = r.size;
                info.flags = 0;
                if r.flags.read {
                    info.flags |= v::VFIO_REGION_INFO_FLAG_READ;
                }
                if r.flags.write {
                    info.flags |= v::VFIO_REGION_INFO_FLAG_WRITE;
                }
                if r.flags.mmap {
                    info.flags |= v::VFIO_REGION_INFO_FLAG_MMAP;
                    let whole = r.mmap_areas.len() == 1
                        && r.mmap_areas[0].start == 0
                        && r.mmap_areas[0].end >= r.size;
                    let irqs = model.layout().interrupts;
                    if whole && irqs.msix_vectors > 0 && u32::from(irqs.msix_bar) == i {
                        // The MSI-X table's BAR may be mapped whole.
                        caps.extend_from_slice(
                            &v::VFIO_REGION_INFO_CAP_MSIX_MAPPABLE.to_ne_bytes(),
                        );
                        caps.extend_from_slice(&1u16.to_ne_bytes());
                        caps.extend_from_slice(&0u32.to_ne_bytes());
                    }
                    if !whole {
                        let areas = r.mmap_areas.iter().map(|a| (a.start, a.end - a.start));
                        caps.extend_from_slice(&sparse_mmap_cap(areas));
                    }
                }
            }
            None => {
                info.size = 0;
                info.flags = 0;
            }
        },
        v::VFIO_PCI_ROM_REGION_INDEX => {
            // No ROM.
            info.size = 0;
            info.flags = 0;
        }
        // The VGA region of a device that is no VGA device.
        _ => return Err(Errno::EINVAL),
    }
    put_region_info(arg, info, &caps)
}

/// `struct vfio_region_info_cap_sparse_mmap` for `areas` (offset, size),
/// the last capability of a chain.
pub(crate) fn sparse_mmap_cap(areas: impl ExactSizeIterator<Item = (u64, u64)>) -> Vec<u8> {
    let mut cap = Vec::new();
    cap.extend_from_slice(&v::VFIO_REGION_INFO_CAP_SPARSE_MMAP.to_ne_bytes());
    cap.extend_from_slice(&1u16.to_ne_bytes()); // version
    cap.extend_from_slice(&0u32.to_ne_bytes()); // next
    cap.extend_from_slice(&(areas.len() as u32).to_ne_bytes());
    cap.extend_from_slice(&0u32.to_ne_bytes());
    for (start, size) in areas {
        cap.extend_from_slice(&start.to_ne_bytes());
        cap.extend_from_slice(&size.to_ne_bytes());
    }
    cap
}

/// Writes `info` to the program's `vfio_region_info` at `arg`, with the
/// capability chain `caps` after it when the program's `argsz` has room,
/// else only the room it needs.
pub(crate) fn put_region_info(
    arg: usize,
    mut info: v::VfioRegionInfo,
    caps: &[u8],
) -> Result<i64, Errno> {
    let head = std::mem::size_of::<v::VfioRegionInfo>();
    if !caps.is_empty() {
        info.flags |= v::VFIO_REGION_INFO_FLAG_CAPS;
        let needed = (head + caps.len()) as u32;
        if info.argsz < needed {
            // Too small for the chain: say how much is needed.
            info.argsz = needed;
        } else {
            info.cap_offset = head as u32;
            // The chain's offsets are from the start of the structure.
            user::write(arg + head, caps)?;
        }
    }
    user::write_struct(arg, &info, head)?;
    Ok(0)
}

/// `VFIO_DEVICE_GET_IRQ_INFO`.
pub fn get_irq_info(dev: &EmuDevice, arg: usize) -> Result<i64, Errno> {
    const MINSZ: usize = 16;
    let mut info: v::VfioIrqInfo = user::read_struct(arg, MINSZ)?;
    if (info.argsz as usize) < MINSZ || info.index >= v::VFIO_PCI_NUM_IRQS {
        return Err(Errno::EINVAL);
    }
    info.count = dev.irqs.lock().unwrap().count(info.index);
    info.flags = match dev.remote() {
        Some(r) => r.irq_flags(info.index),
        None => irq::info_flags(info.index),
    };
    user::write_struct(arg, &info, MINSZ)?;
    Ok(0)
}

/// `VFIO_DEVICE_RESET`: a function-level reset (memory gated meanwhile,
/// every mapping zapped, the model back to its reset values; config space
/// kept, as vfio-pci saves and restores it around the reset).
pub fn reset(dev: &EmuDevice) -> Result<i64, Errno> {
    match &dev.backend {
        Backend::Model(m) => m.reset().map_err(|e| errno_of(&e))?,
        Backend::Remote(r) => r.reset()?,
    }
    Ok(0)
}

/// `pread` of the device fd.
pub fn pread(dev: &EmuDevice, buf: usize, len: usize, off: u64) -> Result<i64, Errno> {
    let (index, at) = region_of(off);
    let model = match &dev.backend {
        Backend::Model(m) => m,
        Backend::Remote(r) => return r.rw(index, at, buf, len, false),
    };
    if index == v::VFIO_PCI_CONFIG_REGION_INDEX {
        let size = dev.config_size();
        if at >= size {
            return Ok(0);
        }
        let n = len.min((size - at) as usize);
        let mut tmp = vec![0u8; n];
        model.read_config(at, &mut tmp).map_err(|e| errno_of(&e))?;
        user::write(buf, &tmp)?;
        return Ok(n as i64);
    }
    if index >= 6 {
        return Err(Errno::EINVAL);
    }
    if model.is_registers(index) {
        // Every access reaches the model: read into a bounce buffer, then
        // copy out (a bad buffer is EFAULT after the reads, as the
        // kernel's ioread-then-copy_to_user).
        let mut tmp = vec![0u8; len];
        if len > 0 {
            model.read(index, at, &mut tmp).map_err(|e| errno_of(&e))?;
        }
        user::write(buf, &tmp)?;
        return Ok(len as i64);
    }
    model
        .device()
        .read_region_raw(index, at, buf as *mut u8, len)
        .map_err(|e| errno_of(&e))?;
    Ok(len as i64)
}

/// `pwrite` of the device fd.
pub fn pwrite(dev: &EmuDevice, buf: usize, len: usize, off: u64) -> Result<i64, Errno> {
    let (index, at) = region_of(off);
    let model = match &dev.backend {
        Backend::Model(m) => m,
        Backend::Remote(r) => return r.rw(index, at, buf, len, true),
    };
    if index == v::VFIO_PCI_CONFIG_REGION_INDEX {
        let size = dev.config_size();
        if at >= size {
            return Ok(0);
        }
        let n = len.min((size - at) as usize);
        let data = user::read(buf, n)?;
        model.write_config(at, &data).map_err(|e| errno_of(&e))?;
        return Ok(n as i64);
    }
    if index >= 6 {
        return Err(Errno::EINVAL);
    }
    if model.is_registers(index) {
        let data = user::read(buf, len)?;
        if len > 0 {
            model.write(index, at, &data).map_err(|e| errno_of(&e))?;
        }
        return Ok(len as i64);
    }
    model
        .device()
        .write_region_raw(index, at, buf as *const u8, len)
        .map_err(|e| errno_of(&e))?;
    Ok(len as i64)
}

/// `mmap` of the device fd at `off`: a barmap mapping of the BAR, lazily
/// faulted and revocable, placed as the program asked (a register BAR's
/// mapping traps every access to the model).
pub fn mmap(
    dev: &EmuDevice,
    addr: usize,
    len: usize,
    prot: i32,
    flags: i32,
    off: u64,
) -> Result<ModelMapping, Errno> {
    let (index, at) = region_of(off);
    let Backend::Model(model) = &dev.backend else {
        // A remote device's mapping is the kernel's, of the server's file:
        // see crate::remote::RemoteDevice::mmap.
        return Err(Errno::EINVAL);
    };
    if flags & libc::MAP_SHARED == 0 || index >= 6 || len == 0 {
        return Err(Errno::EINVAL);
    }
    let fixed = flags & (libc::MAP_FIXED | libc::MAP_FIXED_NOREPLACE) != 0;
    let placement = if fixed {
        Placement::Fixed(addr)
    } else {
        Placement::Anywhere
    };
    let prot = if prot & libc::PROT_WRITE != 0 {
        Prot::ReadWrite
    } else {
        Prot::Read
    };
    let len = len.next_multiple_of(4096);
    model
        .map(index, at, len, prot, placement)
        .map_err(|e| errno_of(&e))
}
