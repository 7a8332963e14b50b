//! One served device: a barmap-models device, its memory BARs as memfds,
//! its surroundings ([`ServerHost`]), the clients connected to it, and
//! the device-wide operations (config writes, reset, D3hot, COMMAND.MEM,
//! removal) that revoke or restore the memory BARs in every client.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use barmap::{Error, PowerState};
use barmap_models::{DeviceModel, ModelDevice, RegionKind};

use crate::bar::{Cost, MemBar};
use crate::host::{ClientId, ServerHost};
use crate::proto;

/// A client connected to a device, as `SO_PEERCRED` named it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClientInfo {
    /// The connection's number (unique in the server).
    pub id: ClientId,
    /// Process ID at connect time.
    pub pid: i32,
    /// User ID.
    pub uid: u32,
    /// Group ID.
    pub gid: u32,
}

/// Counters of one served device.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct DeviceCounters {
    /// Messages handled.
    pub messages: u64,
    /// Region reads by message.
    pub region_reads: u64,
    /// Region writes by message.
    pub region_writes: u64,
    /// Region accesses refused (EIO while memory is disabled, ENODEV
    /// after removal, EINVAL out of range).
    pub region_errors: u64,
    /// Revocations of the memory BARs (truncations of every memfd).
    pub revocations: u64,
    /// Restorations.
    pub restorations: u64,
    /// Bytes saved and restored by those.
    pub bytes_moved: u64,
    /// Nanoseconds spent revoking (all BARs together), summed.
    pub revoke_ns: u64,
    /// Nanoseconds spent restoring, summed.
    pub restore_ns: u64,
    /// Resets.
    pub resets: u64,
    /// Clients that connected.
    pub connections: u64,
    /// Clients refused (exclusive device held, device removed).
    pub refused: u64,
    /// Tamper events: times a client had changed a memory BAR memfd's
    /// size (grown while revoked, shrunk or grown while live) and the
    /// server set it back (see [`crate::bar`]).
    pub tampers: u64,
}

/// A device the server holds.
pub struct ServedDevice {
    /// Its name (the `--device` spec that made it).
    pub name: String,
    /// Whether only one client at a time may hold it.
    pub exclusive: bool,
    model: ModelDevice,
    bars: Vec<Option<(MemBar, Vec<u8>)>>,
    host: Arc<ServerHost>,
    clients: Mutex<Vec<(ClientInfo, OwnedFd)>>,
    removed: AtomicBool,
    /// Serialises revocation and restoration against each other.
    sync: Mutex<()>,
    counters: Mutex<DeviceCounters>,
    messages: AtomicU64,
}

impl std::fmt::Debug for ServedDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedDevice")
            .field("name", &self.name)
            .field("exclusive", &self.exclusive)
            .finish()
    }
}

/// What the control socket reports of a device.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceStatus {
    /// Index in the server.
    pub index: usize,
    /// The spec it was made from.
    pub name: String,
    /// Its socket.
    pub socket: String,
    /// Vendor and device ID.
    pub id: String,
    /// COMMAND.
    pub command: u16,
    /// Whether device memory is accessible (COMMAND.MEM, D0, present).
    pub memory_enabled: bool,
    /// Whether its memory BARs are revoked now.
    pub revoked: bool,
    /// Whether it was removed.
    pub removed: bool,
    /// Whether a second client is refused.
    pub exclusive: bool,
    /// The connected clients.
    pub clients: Vec<ClientInfo>,
    /// DMA windows mapped.
    pub dma_windows: usize,
}

impl ServedDevice {
    /// Builds the device for `model` and a memfd for each memory BAR
    /// (its initial contents copied in).
    pub fn new(name: &str, model: Box<dyn DeviceModel>, exclusive: bool) -> barmap::Result<Self> {
        let model = ModelDevice::builder_boxed(model).build()?;
        let host = Arc::new(ServerHost::default());
        model.set_host(host.clone());
        let mut bars: Vec<Option<(MemBar, Vec<u8>)>> = (0..6).map(|_| None).collect();
        for (index, kind) in &model.layout().regions {
            if let RegionKind::Memory(spec) = kind {
                let name = format!("barmap-bar{index}");
                let bar =
                    MemBar::new(&name, spec.size, &spec.init, spec.flags.write).map_err(|e| {
                        Error::Os {
                            op: "memfd of a served BAR",
                            errno: e.raw_os_error().unwrap_or(libc::EIO),
                        }
                    })?;
                bars[*index as usize] = Some((bar, spec.init.clone()));
            }
        }
        let dev = ServedDevice {
            name: name.to_string(),
            exclusive,
            model,
            bars,
            host,
            clients: Mutex::new(Vec::new()),
            removed: AtomicBool::new(false),
            sync: Mutex::new(()),
            counters: Mutex::new(DeviceCounters::default()),
            messages: AtomicU64::new(0),
        };
        dev.sync_bars();
        Ok(dev)
    }

    /// The model device.
    pub fn model(&self) -> &ModelDevice {
        &self.model
    }

    /// The device's surroundings.
    pub fn host(&self) -> &Arc<ServerHost> {
        &self.host
    }

    /// Memory BAR `index`, if it is one.
    pub fn mem_bar(&self, index: u32) -> Option<&MemBar> {
        self.bars.get(index as usize)?.as_ref().map(|(b, _)| b)
    }

    /// Whether the device was removed.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::SeqCst)
    }

    /// Registers a client; refused (EBUSY) if the device is exclusive and
    /// held, ENODEV if removed. `sock` is a duplicate of its connection,
    /// kept to shut it down on removal.
    pub fn attach(&self, info: ClientInfo, sock: OwnedFd) -> Result<(), i32> {
        let mut clients = self.clients.lock().unwrap();
        let refused = if self.is_removed() {
            Some(libc::ENODEV)
        } else if self.exclusive && !clients.is_empty() {
            Some(libc::EBUSY)
        } else {
            None
        };
        let mut c = self.counters.lock().unwrap();
        if let Some(errno) = refused {
            c.refused += 1;
            return Err(errno);
        }
        c.connections += 1;
        clients.push((info, sock));
        Ok(())
    }

    /// Forgets a client and what it registered.
    pub fn detach(&self, client: ClientId) {
        self.clients.lock().unwrap().retain(|(c, _)| c.id != client);
        self.host.forget_client(client);
    }

    /// The clients connected now.
    pub fn clients(&self) -> Vec<ClientInfo> {
        self.clients
            .lock()
            .unwrap()
            .iter()
            .map(|(c, _)| c.clone())
            .collect()
    }

    /// Counts a handled message.
    pub fn count_message(&self) {
        self.messages.fetch_add(1, Ordering::Relaxed);
    }

    /// Updates the counters.
    pub fn count(&self, f: impl FnOnce(&mut DeviceCounters)) {
        f(&mut self.counters.lock().unwrap());
    }

    /// The counters.
    pub fn counters(&self) -> DeviceCounters {
        let mut c = *self.counters.lock().unwrap();
        c.messages = self.messages.load(Ordering::Relaxed);
        c.tampers = self.bars.iter().flatten().map(|(b, _)| b.tampers()).sum();
        c
    }

    /// Whether the memory BARs are revoked now.
    pub fn revoked(&self) -> bool {
        self.bars.iter().flatten().any(|(b, _)| b.is_revoked())
    }

    /// Makes the memory BARs match the device's state: revoked (every
    /// memfd truncated) unless device memory is accessible (COMMAND.MEM
    /// set, D0, not removed), restored otherwise. Returns the cost.
    pub fn sync_bars(&self) -> Cost {
        let _g = self.sync.lock().unwrap();
        let live = self.model.device().memory_enabled() && !self.is_removed();
        self.set_bars(live)
    }

    fn set_bars(&self, live: bool) -> Cost {
        let mut total = Cost::default();
        let mut changed = false;
        for (bar, _) in self.bars.iter().flatten() {
            if bar.is_revoked() != live {
                continue;
            }
            changed = true;
            let r = if live { bar.restore() } else { bar.revoke() };
            match r {
                Ok(c) => {
                    total.bytes += c.bytes;
                    total.time += c.time;
                }
                Err(e) => tracing::error!(
                    "memory BAR {}: {e}",
                    if live { "restore" } else { "revoke" }
                ),
            }
        }
        if changed {
            self.count(|c| {
                if live {
                    c.restorations += 1;
                    c.restore_ns += total.time.as_nanos() as u64;
                } else {
                    c.revocations += 1;
                    c.revoke_ns += total.time.as_nanos() as u64;
                }
                c.bytes_moved += total.bytes;
            });
        }
        total
    }

    /// Function-level reset: the memory BARs revoked first (every client's
    /// mapping), the model reset, register contents restored, then the
    /// BARs restored if memory is still enabled (config space is restored
    /// as the kernel's save and restore does).
    pub fn reset(&self) -> Result<(), i32> {
        if self.is_removed() {
            return Err(libc::ENODEV);
        }
        let _g = self.sync.lock().unwrap();
        self.set_bars(false);
        let r = self.model.reset();
        for (bar, init) in self.bars.iter().flatten() {
            let _ = bar.write_init(init);
        }
        self.host.set_intx_masked(false);
        let live = self.model.device().memory_enabled() && !self.is_removed();
        self.set_bars(live);
        self.count(|c| c.resets += 1);
        r.map_err(|e| errno_of(&e))
    }

    /// Sets or clears COMMAND.MEM (as a config write would), then revokes
    /// or restores.
    pub fn set_memory_enabled(&self, on: bool) -> Cost {
        self.model.device().set_memory_enabled(on);
        self.sync_bars()
    }

    /// Enters D3hot (`true`) or returns to D0.
    pub fn set_d3hot(&self, d3: bool) -> Cost {
        self.model.device().set_power_state(if d3 {
            PowerState::D3hot
        } else {
            PowerState::D0
        });
        self.sync_bars()
    }

    /// Surprise removal: the REQ interrupt to every client that asked for
    /// it, then the device is gone: its BARs revoked, its clients'
    /// connections shut down, new connections refused.
    pub fn remove(&self) -> usize {
        let requested = usize::from(self.host.signal_raw(proto::IRQ_REQ, 0));
        self.removed.store(true, Ordering::SeqCst);
        self.sync_bars();
        self.shutdown_clients();
        requested
    }

    /// Shuts down every client's connection: its threads see end of file
    /// and release what it held.
    pub fn shutdown_clients(&self) {
        for (_, sock) in self.clients.lock().unwrap().iter() {
            // SAFETY: shutdown on a socket fd we hold.
            unsafe { libc::shutdown(sock.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }

    /// Region `index` read by message: BARs, config space. Errors are the
    /// kernel's: EINVAL out of range or no such region, EIO while device
    /// memory is disabled (`vfio_pci_bar_rw`), ENODEV after removal.
    pub fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), i32> {
        let r = self.region_rw(index, offset, buf.len(), |dev| match index {
            proto::CONFIG_REGION => dev.model.read_config(offset, buf).map_err(|e| errno_of(&e)),
            i => match dev.mem_bar(i) {
                Some(bar) => dev.bar_access(|| bar.read(offset, buf)),
                None => dev.model.read(i, offset, buf).map_err(|e| errno_of(&e)),
            },
        });
        self.count(|c| match r {
            Ok(()) => c.region_reads += 1,
            Err(_) => c.region_errors += 1,
        });
        r
    }

    /// Region `index` written by message; a config write then revokes or
    /// restores the memory BARs as COMMAND and PMCSR now say.
    pub fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), i32> {
        let r = self.region_rw(index, offset, data.len(), |dev| match index {
            proto::CONFIG_REGION => {
                let r = dev
                    .model
                    .write_config(offset, data)
                    .map_err(|e| errno_of(&e));
                dev.sync_bars();
                r
            }
            i => match dev.mem_bar(i) {
                Some(_) if !dev.writable(i) => Err(libc::EINVAL),
                Some(bar) => dev.bar_access(|| bar.write(offset, data)),
                None => dev.model.write(i, offset, data).map_err(|e| errno_of(&e)),
            },
        });
        self.count(|c| match r {
            Ok(()) => c.region_writes += 1,
            Err(_) => c.region_errors += 1,
        });
        r
    }

    fn region_rw(
        &self,
        index: u32,
        offset: u64,
        len: usize,
        f: impl FnOnce(&Self) -> Result<(), i32>,
    ) -> Result<(), i32> {
        let size = self.region_size(index).ok_or(libc::EINVAL)?;
        match offset.checked_add(len as u64) {
            Some(end) if end <= size && len > 0 => {}
            _ => return Err(libc::EINVAL),
        }
        if self.is_removed() {
            return Err(libc::ENODEV);
        }
        f(self)
    }

    /// Whether region `index` may be written (a read-only memory BAR, say
    /// an information page, may not).
    fn writable(&self, index: u32) -> bool {
        self.model
            .device()
            .region_info(index)
            .is_none_or(|i| i.flags.write)
    }

    /// A memory BAR access under the device's memory gate: EIO while
    /// memory is disabled, as `vfio_pci_bar_rw` answers.
    fn bar_access(&self, f: impl FnOnce() -> std::io::Result<()>) -> Result<(), i32> {
        match self.model.device().with_memory(f) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.raw_os_error().unwrap_or(libc::EIO)),
            Err(e) => Err(errno_of(&e)),
        }
    }

    /// The size of region `index` (0 for an absent BAR, the ROM and VGA);
    /// `None` past the last region.
    pub fn region_size(&self, index: u32) -> Option<u64> {
        match index {
            0..=5 => Some(match self.model.layout().kind(index) {
                Some(RegionKind::Memory(s)) => s.size,
                Some(RegionKind::Registers { size, .. }) => *size,
                None => 0,
            }),
            proto::CONFIG_REGION => Some(self.model.config_size()),
            6 | 8 => Some(0),
            _ => None,
        }
    }

    /// The status the control socket reports.
    pub fn status(&self, index: usize, socket: String) -> DeviceStatus {
        let l = self.model.layout();
        DeviceStatus {
            index,
            name: self.name.clone(),
            socket,
            id: format!("{:04x}:{:04x}", l.vendor, l.device),
            command: self.model.device().command(),
            memory_enabled: self.model.device().memory_enabled(),
            revoked: self.revoked(),
            removed: self.is_removed(),
            exclusive: self.exclusive,
            clients: self.clients(),
            dma_windows: self.host.dma_windows(),
        }
    }
}

/// The errno a barmap error gets at the protocol: the kernel's answer for
/// the same access.
pub fn errno_of(e: &Error) -> i32 {
    match e {
        Error::MemoryDisabled => libc::EIO,
        Error::DeviceGone => libc::ENODEV,
        Error::Os { errno, .. } => *errno,
        _ => libc::EINVAL,
    }
}
