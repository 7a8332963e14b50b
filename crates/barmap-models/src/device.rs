//! A barmap device driven by a model: BARs built from the model's
//! [`Layout`], register accesses dispatched to its callbacks under the
//! memory gate, the MSI-X table and PBA emulated, reset, and mappings of
//! register BARs that trap every access.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use barmap::device::caps;
use barmap::{Device, DeviceBuilder, Error, Mapping, Placement, Policy, Prot, RegionSpec, Result};

use crate::host::{Host, IrqIndex, NoHost};
use crate::model::{Ctx, DeviceModel, IrqMode, Layout, RegionKind, Store64, Width};
use crate::msix::Msix;

/// The state a device shares with its trapped mappings and worker.
pub(crate) struct Shared {
    pub(crate) device: Device,
    layout: Layout,
    model: Mutex<Box<dyn DeviceModel>>,
    msix: Mutex<Msix>,
    host: RwLock<Arc<dyn Host>>,
    worker: Arc<WorkerSignal>,
}

#[derive(Default)]
pub(crate) struct WorkerSignal {
    state: Mutex<(bool, bool)>, // (work pending, stop)
    cond: Condvar,
}

/// Wakes a device's worker from outside the device (see [`Ctx::waker`]):
/// [`Waker::wake`] asks for [`DeviceModel::work`] to run, as
/// [`Ctx::kick`] does from inside. It holds no reference to the device;
/// once the device is gone, waking does nothing.
///
/// [`Ctx::waker`]: crate::Ctx::waker
/// [`Ctx::kick`]: crate::Ctx::kick
/// [`DeviceModel::work`]: crate::DeviceModel::work
#[derive(Clone)]
pub struct Waker(pub(crate) Arc<WorkerSignal>);

impl std::fmt::Debug for Waker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Waker")
    }
}

impl Waker {
    /// Asks for the device's deferred work to run soon on its worker.
    pub fn wake(&self) {
        self.0.state.lock().unwrap().0 = true;
        self.0.cond.notify_all();
    }
}

/// Builds a [`ModelDevice`].
pub struct ModelDeviceBuilder {
    model: Box<dyn DeviceModel>,
    configure: Box<dyn FnOnce(DeviceBuilder) -> DeviceBuilder>,
}

impl std::fmt::Debug for ModelDeviceBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelDeviceBuilder")
            .field("layout", &self.model.layout())
            .finish()
    }
}

impl ModelDeviceBuilder {
    /// The fault policy of the device's memory BARs.
    pub fn policy(self, policy: Policy) -> Self {
        self.configure(move |b| b.policy(policy))
    }

    /// How long a reset holds the memory gate.
    pub fn reset_time(self, t: Duration) -> Self {
        self.configure(move |b| b.reset_time(t))
    }

    /// Any other setting of barmap's [`DeviceBuilder`] (applied after the
    /// layout's IDs, BARs and capabilities).
    pub fn configure(mut self, f: impl FnOnce(DeviceBuilder) -> DeviceBuilder + 'static) -> Self {
        let before = self.configure;
        self.configure = Box::new(move |b| f(before(b)));
        self
    }

    /// Builds the device: its BARs, config space and, if it has register
    /// BARs, its worker thread.
    pub fn build(self) -> Result<ModelDevice> {
        let layout = self.model.layout();
        let mut b = Device::builder()
            .ids(layout.vendor, layout.device)
            .class(layout.class)
            .revision(layout.revision)
            .interrupt_pin(u8::from(layout.intx))
            .interrupts(layout.interrupts);
        for (index, kind) in &layout.regions {
            let spec = match kind {
                RegionKind::Memory(spec) => spec.clone(),
                RegionKind::Registers { size, mmap, bits64 } => {
                    let mut s = RegionSpec::registers(*size, Vec::new());
                    if !mmap {
                        s = s.unmappable();
                    }
                    if *bits64 {
                        s = s.bits64();
                    }
                    s
                }
            };
            b = b.region(*index, spec);
        }
        let device = (self.configure)(b).build()?;
        let msix = Msix::new(&layout.interrupts);
        let has_registers = layout
            .regions
            .iter()
            .any(|(_, k)| matches!(k, RegionKind::Registers { .. }));
        let shared = Arc::new(Shared {
            device,
            layout,
            model: Mutex::new(self.model),
            msix: Mutex::new(msix),
            host: RwLock::new(Arc::new(NoHost)),
            worker: Arc::default(),
        });
        // Started now, never from a callback: a trapped access runs in a
        // signal handler, where no thread may be created.
        let worker = has_registers.then(|| spawn_worker(&shared));
        Ok(ModelDevice { shared, worker })
    }
}

/// Lets the calling thread run on every CPU the process may use. A
/// device's worker is the device, not a thread of the program: it must
/// not inherit the CPU pinning of whichever program thread created the
/// device (DPDK pins its main thread to one lcore before probing, and the
/// worker would then share that CPU with a polling thread).
fn run_on_any_cpu() {
    // SAFETY: cpu_set_t is plain data; all-ones asks for every CPU, which
    // the kernel narrows to the CPUs the process's cpuset allows. A failure
    // leaves the inherited affinity, which still works.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..libc::CPU_SETSIZE as usize {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn spawn_worker(shared: &Arc<Shared>) -> JoinHandle<()> {
    let weak = Arc::downgrade(shared);
    let signal = shared.worker.clone();
    std::thread::Builder::new()
        .name("barmap-model".into())
        .spawn(move || {
            run_on_any_cpu();
            worker_loop(&weak, &signal)
        })
        .expect("spawning a device model's worker thread")
}

/// The worker: waits for a kick, runs the model's deferred work, until
/// stopped or the device is gone.
fn worker_loop(weak: &std::sync::Weak<Shared>, signal: &WorkerSignal) {
    loop {
        {
            let mut s = signal.state.lock().unwrap();
            while !s.0 && !s.1 {
                s = signal.cond.wait(s).unwrap();
            }
            if s.1 {
                return;
            }
            s.0 = false;
        }
        let Some(shared) = weak.upgrade() else { return };
        let mut model = shared.model();
        let mut ctx = Ctx {
            dev: &shared,
            kicked: false,
        };
        model.work(&mut ctx);
        let again = ctx.kicked;
        drop(model);
        if again {
            shared.kick();
        }
    }
}

/// A barmap [`Device`] whose register BARs are a [`DeviceModel`].
///
/// Memory BARs behave exactly as barmap's. A register BAR's every access
/// reaches the model: [`ModelDevice::read`]/[`ModelDevice::write`] (the
/// front end's `pread`/`pwrite`), and every load and store through a
/// mapping from [`ModelDevice::map`]. Accesses are gated like the kernel's
/// BAR accesses: they fail (or, through a mapping, raise SIGBUS) while
/// COMMAND.MEM is clear, in low power or after the device is gone, and
/// they wait while a reset runs.
pub struct ModelDevice {
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ModelDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelDevice")
            .field("vendor", &self.shared.layout.vendor)
            .field("device", &self.shared.layout.device)
            .field("barmap", &self.shared.device)
            .finish()
    }
}

impl Drop for ModelDevice {
    fn drop(&mut self) {
        {
            let mut s = self.shared.worker.state.lock().unwrap();
            s.1 = true;
        }
        self.shared.worker.cond.notify_all();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

impl ModelDevice {
    /// A builder for a device driven by `model`.
    pub fn builder(model: impl DeviceModel) -> ModelDeviceBuilder {
        Self::builder_boxed(Box::new(model))
    }

    /// [`ModelDevice::builder`] for a boxed model (one chosen by name, say).
    pub fn builder_boxed(model: Box<dyn DeviceModel>) -> ModelDeviceBuilder {
        ModelDeviceBuilder {
            model,
            configure: Box::new(|b| b),
        }
    }

    /// Builds a device driven by `model` with barmap's defaults.
    pub fn new(model: impl DeviceModel) -> Result<ModelDevice> {
        Self::builder(model).build()
    }

    /// The barmap device underneath (config space, memory BARs, the gate).
    pub fn device(&self) -> &Device {
        &self.shared.device
    }

    /// The model's layout.
    pub fn layout(&self) -> &Layout {
        &self.shared.layout
    }

    /// Connects the device to its surroundings (interrupt eventfds, IOMMU
    /// tables); until then it has [`NoHost`].
    pub fn set_host(&self, host: Arc<dyn Host>) {
        *self.shared.host.write().unwrap() = host;
    }

    /// Whether BAR `index` is a register BAR.
    pub fn is_registers(&self, index: u32) -> bool {
        self.shared.is_registers(index)
    }

    /// The interrupt mechanism the program enabled.
    pub fn irq_mode(&self) -> IrqMode {
        self.shared.irq_mode()
    }

    /// Whether MSI-X vector `vector` is pending (raised while masked).
    pub fn msix_pending(&self, vector: u32) -> bool {
        self.shared.msix.lock().unwrap().pending(vector)
    }

    /// One register access: a read of `width` bytes at `offset` of BAR
    /// `region` (which must be a register BAR, the offset a multiple of the
    /// width, the access inside the BAR).
    pub fn read_register(&self, region: u32, offset: u64, width: Width) -> Result<u64> {
        self.shared.access(region, offset, width, None)
    }

    /// One register access: a write of `value`.
    pub fn write_register(&self, region: u32, offset: u64, width: Width, value: u64) -> Result<()> {
        self.shared
            .access(region, offset, width, Some(value))
            .map(|_| ())
    }

    /// A 64-byte store to register BAR `region` at `offset` (64-byte
    /// aligned, inside the BAR) made by `how`, as the trap emulates one:
    /// returns whether the model accepted it ([`DeviceModel::write64`]).
    pub fn write64(&self, region: u32, offset: u64, data: &[u8; 64], how: Store64) -> Result<bool> {
        self.shared.bounds(region, offset, 64)?;
        if offset % 64 != 0 {
            return Err(Error::InvalidSpec(format!(
                "a 64-byte store at {offset:#x} is not 64-byte aligned"
            )));
        }
        self.shared
            .device
            .with_memory(|| self.shared.store64_locked(region, offset, data, how))
    }

    /// Reads `buf.len()` bytes of BAR `region` at `offset`. A register BAR
    /// is read as the kernel's region access does, in naturally aligned
    /// accesses of at most 8 bytes, all under one hold of the gate; a
    /// memory BAR as barmap reads it.
    pub fn read(&self, region: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
        if !self.is_registers(region) {
            return self.shared.device.read_region(region, offset, buf);
        }
        self.shared.bounds(region, offset, buf.len())?;
        self.shared.device.with_memory(|| {
            for (at, w) in split(offset, buf.len()) {
                let v = self.shared.access_locked(region, at, w, None);
                let i = (at - offset) as usize;
                buf[i..i + w.bytes()].copy_from_slice(&v.to_le_bytes()[..w.bytes()]);
            }
        })
    }

    /// Writes `data` to BAR `region` at `offset` (see [`ModelDevice::read`]).
    pub fn write(&self, region: u32, offset: u64, data: &[u8]) -> Result<()> {
        if !self.is_registers(region) {
            return self.shared.device.write_region(region, offset, data);
        }
        self.shared.bounds(region, offset, data.len())?;
        self.shared.device.with_memory(|| {
            for (at, w) in split(offset, data.len()) {
                let i = (at - offset) as usize;
                let mut v = [0u8; 8];
                v[..w.bytes()].copy_from_slice(&data[i..i + w.bytes()]);
                self.shared
                    .access_locked(region, at, w, Some(u64::from_le_bytes(v)));
            }
        })
    }

    /// Bytes of config space: 256, or 4096 with
    /// [`Layout::extended_config`].
    pub fn config_size(&self) -> u64 {
        self.shared.layout.config_size
    }

    /// Reads config space: the header and capabilities as
    /// [`Device::read_config`] does, extended config space (0x100 and up)
    /// from the model, in naturally aligned accesses.
    pub fn read_config(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = self.config_end(offset, buf.len())?;
        let std_end = end.min(STD_CONFIG);
        if offset < STD_CONFIG {
            let n = (std_end - offset) as usize;
            self.shared.device.read_config(offset, &mut buf[..n])?;
        }
        let ext = offset.max(STD_CONFIG);
        if ext < end {
            let skip = (ext - offset) as usize;
            let mut model = self.shared.model();
            let mut ctx = Ctx {
                dev: &self.shared,
                kicked: false,
            };
            for (at, w) in split(ext, (end - ext) as usize) {
                let v = model.config_read(&mut ctx, at, w) & w.mask();
                let i = skip + (at - ext) as usize;
                buf[i..i + w.bytes()].copy_from_slice(&v.to_le_bytes()[..w.bytes()]);
            }
            let kicked = ctx.kicked;
            drop(model);
            if kicked {
                self.shared.kick();
            }
        }
        Ok(())
    }

    /// Writes config space, as [`Device::write_config`] does (extended
    /// config space goes to the model); clearing the MSI-X function mask
    /// delivers the vectors that became pending while it was set.
    pub fn write_config(&self, offset: u64, data: &[u8]) -> Result<()> {
        let end = self.config_end(offset, data.len())?;
        let std_end = end.min(STD_CONFIG);
        if offset < STD_CONFIG {
            let n = (std_end - offset) as usize;
            self.shared.device.write_config(offset, &data[..n])?;
            if self.shared.layout.interrupts.msix_vectors > 0 {
                self.shared.deliver_pending();
            }
        }
        let ext = offset.max(STD_CONFIG);
        if ext < end {
            let skip = (ext - offset) as usize;
            let mut model = self.shared.model();
            let mut ctx = Ctx {
                dev: &self.shared,
                kicked: false,
            };
            for (at, w) in split(ext, (end - ext) as usize) {
                let i = skip + (at - ext) as usize;
                let mut v = [0u8; 8];
                v[..w.bytes()].copy_from_slice(&data[i..i + w.bytes()]);
                model.config_write(&mut ctx, at, w, u64::from_le_bytes(v));
            }
            let kicked = ctx.kicked;
            drop(model);
            if kicked {
                self.shared.kick();
            }
        }
        Ok(())
    }

    fn config_end(&self, offset: u64, len: usize) -> Result<u64> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.config_size() && len > 0 => Ok(end),
            _ => Err(Error::ConfigRange { offset, len }),
        }
    }

    /// Masks or unmasks MSI-X vector `vector` in the emulated table, as the
    /// host kernel does when the program enables or disables the vector
    /// through `VFIO_DEVICE_SET_IRQS` (the program never writes the table
    /// itself under vfio-pci); unmasking delivers it if it was pending.
    pub fn set_msix_masked(&self, vector: u32, masked: bool) {
        self.shared.msix.lock().unwrap().set_masked(vector, masked);
        if !masked {
            self.shared.deliver_pending();
        }
    }

    /// Function-level reset (`VFIO_DEVICE_RESET` too): every mapping
    /// revoked, the memory gate held while the model and the MSI-X table go
    /// back to their reset values (accesses meanwhile wait), config space
    /// restored as the kernel's save and restore does.
    pub fn reset(&self) -> Result<()> {
        self.shared.device.reset_with(|| {
            self.shared.model().reset();
            self.shared.msix.lock().unwrap().reset();
        })
    }

    /// Maps `len` bytes of BAR `region` at `offset`. A memory BAR gives
    /// barmap's mapping; a register BAR gives a mapping whose pages stay
    /// inaccessible, so that each load and store traps and is emulated as
    /// a call of the model ([`crate::trap`]). Validation and errors are
    /// [`Device::map_at`]'s.
    pub fn map(
        &self,
        region: u32,
        offset: u64,
        len: usize,
        prot: Prot,
        placement: Placement,
    ) -> Result<ModelMapping> {
        let mapping = self
            .shared
            .device
            .map_at(region, offset, len, prot, placement)?;
        if !self.is_registers(region) {
            return Ok(ModelMapping {
                mapping: Arc::new(mapping),
                trap: None,
            });
        }
        let mapping = Arc::new(mapping);
        let trap =
            crate::trap::register(&mapping, &self.shared, prot.writable()).map_err(|errno| {
                Error::Os {
                    op: "mprotect of a register mapping",
                    errno,
                }
            })?;
        Ok(ModelMapping {
            mapping,
            trap: Some(trap),
        })
    }
}

/// The standard config space's size: the header and capabilities that
/// barmap's [`Device`] keeps.
const STD_CONFIG: u64 = 256;

/// Naturally aligned accesses of at most 8 bytes covering `len` bytes at
/// `offset`, in order.
fn split(offset: u64, len: usize) -> Vec<(u64, Width)> {
    let mut out = Vec::new();
    let (mut at, end) = (offset, offset + len as u64);
    while at < end {
        let w = [8u64, 4, 2, 1]
            .into_iter()
            .find(|&w| at % w == 0 && at + w <= end)
            .unwrap_or(1);
        out.push((at, Width::from_bytes(w as usize).expect("1, 2, 4 or 8")));
        at += w;
    }
    out
}

impl Shared {
    pub(crate) fn model(&self) -> MutexGuard<'_, Box<dyn DeviceModel>> {
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn host(&self) -> Arc<dyn Host> {
        self.host.read().unwrap().clone()
    }

    fn is_registers(&self, index: u32) -> bool {
        matches!(self.layout.kind(index), Some(RegionKind::Registers { .. }))
    }

    pub(crate) fn irq_mode(&self) -> IrqMode {
        let host = self.host();
        if host.enabled(IrqIndex::Msix) {
            IrqMode::Msix
        } else if host.enabled(IrqIndex::Msi) {
            IrqMode::Msi
        } else if host.enabled(IrqIndex::Intx) {
            IrqMode::Intx
        } else {
            IrqMode::None
        }
    }

    pub(crate) fn kick(&self) {
        self.waker().wake();
    }

    /// A handle that kicks the worker from outside the device.
    pub(crate) fn waker(&self) -> Waker {
        Waker(self.worker.clone())
    }

    fn bounds(&self, region: u32, offset: u64, len: usize) -> Result<()> {
        let Some(RegionKind::Registers { size, .. }) = self.layout.kind(region) else {
            return Err(Error::NoSuchRegion(region));
        };
        if len == 0 {
            return Err(Error::ZeroLength);
        }
        match offset.checked_add(len as u64) {
            Some(end) if end <= *size => Ok(()),
            _ => Err(Error::OutOfRange {
                region,
                offset,
                len,
                size: *size,
            }),
        }
    }

    /// One register access under the gate.
    pub(crate) fn access(
        &self,
        region: u32,
        offset: u64,
        width: Width,
        write: Option<u64>,
    ) -> Result<u64> {
        self.bounds(region, offset, width.bytes())?;
        if offset % width.bytes() as u64 != 0 {
            return Err(Error::InvalidSpec(format!(
                "a {}-byte register access at {offset:#x} is not aligned",
                width.bytes()
            )));
        }
        self.device
            .with_memory(|| self.access_locked(region, offset, width, write))
    }

    /// One register access; the caller holds the gate.
    pub(crate) fn access_locked(
        &self,
        region: u32,
        offset: u64,
        width: Width,
        write: Option<u64>,
    ) -> u64 {
        let irqs = &self.layout.interrupts;
        if irqs.msix_vectors > 0 && u32::from(irqs.msix_bar) == region {
            let mut msix = self.msix.lock().unwrap();
            if let Some(v) = msix.access(offset, width, write) {
                let fire = msix.take_deliverable(self.msix_function_masked());
                drop(msix);
                for vector in fire {
                    self.host().signal(IrqIndex::Msix, vector);
                }
                return v & width.mask();
            }
        }
        let mut model = self.model();
        let mut ctx = Ctx {
            dev: self,
            kicked: false,
        };
        let v = match write {
            None => model.read(&mut ctx, region, offset, width) & width.mask(),
            Some(value) => {
                model.write(&mut ctx, region, offset, width, value & width.mask());
                0
            }
        };
        let kicked = ctx.kicked;
        drop(model);
        if kicked {
            self.kick();
        }
        v
    }

    /// A 64-byte store ([`DeviceModel::write64`]); the caller holds the
    /// gate. One that meets the emulated MSI-X table or PBA is dropped
    /// (refused), as those take accesses of up to 8 bytes.
    pub(crate) fn store64_locked(
        &self,
        region: u32,
        offset: u64,
        data: &[u8; 64],
        how: Store64,
    ) -> bool {
        let irqs = &self.layout.interrupts;
        if irqs.msix_vectors > 0 && u32::from(irqs.msix_bar) == region {
            let vectors = u64::from(irqs.msix_vectors);
            let table = (u64::from(irqs.msix_table), vectors * 16);
            let pba = (u64::from(irqs.msix_pba), vectors.div_ceil(64) * 8);
            let meets = |(at, len): (u64, u64)| offset < at + len && at < offset + 64;
            if meets(table) || meets(pba) {
                return false;
            }
        }
        let mut model = self.model();
        let mut ctx = Ctx {
            dev: self,
            kicked: false,
        };
        let accepted = model.write64(&mut ctx, region, offset, data, how);
        let kicked = ctx.kicked;
        drop(model);
        if kicked {
            self.kick();
        }
        accepted
    }

    fn msix_function_masked(&self) -> bool {
        let mut ctl = [0u8; 2];
        let at = caps::MSIX as u64 + 2;
        if self.device.read_config(at, &mut ctl).is_err() {
            return true;
        }
        u16::from_le_bytes(ctl) & (1 << 14) != 0
    }

    /// Raises MSI-X `vector`: signalled now, or left pending while masked.
    pub(crate) fn msix_raise(&self, vector: u32) -> bool {
        let function_masked = self.msix_function_masked();
        let mut msix = self.msix.lock().unwrap();
        if !msix.raise(vector, function_masked) {
            return false;
        }
        drop(msix);
        self.host().signal(IrqIndex::Msix, vector)
    }

    fn deliver_pending(&self) {
        let function_masked = self.msix_function_masked();
        let fire = self.msix.lock().unwrap().take_deliverable(function_masked);
        for vector in fire {
            self.host().signal(IrqIndex::Msix, vector);
        }
    }
}

/// A mapping of a BAR made by [`ModelDevice::map`]. Dropping it unmaps
/// what is left of it (and stops trapping its addresses).
#[derive(Debug)]
pub struct ModelMapping {
    mapping: Arc<Mapping>,
    trap: Option<crate::trap::TrapId>,
}

impl ModelMapping {
    /// First byte's address.
    pub fn addr(&self) -> usize {
        self.mapping.addr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.mapping.len()
    }

    /// Always false: a mapping has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Raw pointer to the first byte, for volatile access.
    pub fn as_ptr(&self) -> *mut u8 {
        self.mapping.as_ptr()
    }

    /// Whether every byte is unmapped (by the process's own munmap, say).
    pub fn is_gone(&self) -> bool {
        self.mapping.is_gone()
    }

    /// Whether accesses to it are trapped (a register BAR's mapping).
    pub fn is_trapped(&self) -> bool {
        self.trap.is_some()
    }

    /// barmap's mapping underneath.
    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }
}

impl Drop for ModelMapping {
    fn drop(&mut self) {
        if let Some(id) = self.trap.take() {
            crate::trap::unregister(id);
        }
    }
}
