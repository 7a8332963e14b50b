//! A served device's surroundings ([`barmap_models::Host`]): the
//! interrupt eventfds its clients registered and the DMA windows they
//! mapped. A model raises an interrupt or DMAs through [`ServerHost`]
//! exactly as it does in-process; only the far end differs.
//!
//! DMA windows come two ways, as vfio-user has them: with a file
//! descriptor (the client's memory file: the server reaches it with
//! `pread`/`pwrite` at the window's file offset, so a client that
//! truncates or unmaps its memory costs a DMA fault, never the server's
//! life), or without one (each access becomes a `VFIO_USER_DMA_READ` or
//! `VFIO_USER_DMA_WRITE` message to the client, answered on the same
//! socket).

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Mutex, RwLock, Weak};

use barmap_models::{Host, IommuFault, IrqIndex};

use crate::bar::{pread_all, pwrite_all};
use crate::conn::Outbound;
use crate::proto;

/// Which client a registration belongs to (a connection's number).
pub type ClientId = u64;

/// One DMA window.
#[derive(Debug)]
pub struct DmaWindow {
    /// First IOVA.
    pub iova: u64,
    /// Bytes.
    pub size: u64,
    /// `VFIO_DMA_MAP_FLAG_READ | _WRITE`: what the device may do.
    pub flags: u32,
    /// The client that mapped it.
    pub client: ClientId,
    /// How the server reaches it.
    pub backing: Backing,
}

/// How a DMA window is reached.
#[derive(Debug)]
pub enum Backing {
    /// The client's memory file, from this offset.
    File(OwnedFd, u64),
    /// By message to the client.
    Messages(Weak<Outbound>),
}

/// One interrupt index's eventfds, by vector.
#[derive(Debug, Default)]
struct Index {
    fds: Vec<Option<(ClientId, OwnedFd)>>,
}

#[derive(Debug, Default)]
struct Irqs {
    index: [Index; 5],
    /// INTx masked (it masks itself when it fires: AUTOMASKED).
    intx_masked: bool,
    /// The INTx line's level.
    intx_level: bool,
}

/// Counters of a served device's surroundings.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct HostCounters {
    /// Interrupts signalled to an eventfd.
    pub irqs_signalled: u64,
    /// DMA accesses through a client's file.
    pub dma_file: u64,
    /// DMA accesses by message.
    pub dma_messages: u64,
    /// DMA accesses the "IOMMU" refused.
    pub dma_faults: u64,
}

/// The interrupt eventfds and DMA windows of one served device.
#[derive(Debug, Default)]
pub struct ServerHost {
    irqs: Mutex<Irqs>,
    dma: RwLock<Vec<DmaWindow>>,
    counters: Mutex<HostCounters>,
}

fn signal_fd(fd: &OwnedFd) -> bool {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a local to an eventfd we hold.
    unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), 8) == 8 }
}

fn slot(index: IrqIndex) -> usize {
    match index {
        IrqIndex::Intx => proto::IRQ_INTX as usize,
        IrqIndex::Msi => proto::IRQ_MSI as usize,
        IrqIndex::Msix => proto::IRQ_MSIX as usize,
    }
}

impl ServerHost {
    /// Counters so far.
    pub fn counters(&self) -> HostCounters {
        *self.counters.lock().unwrap()
    }

    /// Installs `fds` for vectors `start..start+fds.len()` of interrupt
    /// index `index` (`None` de-assigns), for `client`.
    pub fn set_eventfds(
        &self,
        index: u32,
        start: u32,
        fds: Vec<Option<OwnedFd>>,
        client: ClientId,
    ) {
        let mut irqs = self.irqs.lock().unwrap();
        let v = &mut irqs.index[index as usize].fds;
        let end = start as usize + fds.len();
        if v.len() < end {
            v.resize_with(end, || None);
        }
        for (i, fd) in fds.into_iter().enumerate() {
            v[start as usize + i] = fd.map(|fd| (client, fd));
        }
        if index == proto::IRQ_INTX {
            irqs.intx_masked = false;
        }
    }

    /// Removes every eventfd of `index`.
    pub fn clear_index(&self, index: u32) {
        self.irqs.lock().unwrap().index[index as usize].fds.clear();
    }

    /// Whether vector `vector` of `index` has an eventfd.
    pub fn has_eventfd(&self, index: u32, vector: u32) -> bool {
        let irqs = self.irqs.lock().unwrap();
        matches!(
            irqs.index[index as usize].fds.get(vector as usize),
            Some(Some(_))
        )
    }

    /// Signals vector `vector` of `index` (any index, ERR and REQ too).
    pub fn signal_raw(&self, index: u32, vector: u32) -> bool {
        let irqs = self.irqs.lock().unwrap();
        let ok = match irqs.index[index as usize].fds.get(vector as usize) {
            Some(Some((_, fd))) => signal_fd(fd),
            _ => false,
        };
        drop(irqs);
        if ok {
            self.counters.lock().unwrap().irqs_signalled += 1;
        }
        ok
    }

    /// Masks (`true`) or unmasks INTx; an unmask while the line is
    /// asserted fires it again (and masks it again).
    pub fn set_intx_masked(&self, masked: bool) {
        let mut irqs = self.irqs.lock().unwrap();
        irqs.intx_masked = masked;
        let fire = !masked && irqs.intx_level;
        drop(irqs);
        if fire {
            self.set_intx(true);
        }
    }

    /// Forgets everything `client` registered: its eventfds and DMA
    /// windows (the protocol's answer to a client's disconnection).
    pub fn forget_client(&self, client: ClientId) {
        let mut irqs = self.irqs.lock().unwrap();
        for index in irqs.index.iter_mut() {
            for fd in index.fds.iter_mut() {
                if matches!(fd, Some((c, _)) if *c == client) {
                    *fd = None;
                }
            }
        }
        drop(irqs);
        self.dma.write().unwrap().retain(|w| w.client != client);
    }

    /// Adds a DMA window: EINVAL for an empty or wrapping one, EEXIST if
    /// it overlaps one already mapped.
    pub fn dma_map(&self, w: DmaWindow) -> Result<(), i32> {
        let end = w.iova.checked_add(w.size).ok_or(libc::EINVAL)?;
        if w.size == 0 {
            return Err(libc::EINVAL);
        }
        let mut dma = self.dma.write().unwrap();
        if dma.iter().any(|o| o.iova < end && w.iova < o.iova + o.size) {
            return Err(libc::EEXIST);
        }
        dma.push(w);
        Ok(())
    }

    /// Removes the window of exactly `iova` and `size` that `client`
    /// mapped (ENOENT otherwise); waits for DMA through it to finish.
    pub fn dma_unmap(&self, client: ClientId, iova: u64, size: u64) -> Result<(), i32> {
        let mut dma = self.dma.write().unwrap();
        let i = dma
            .iter()
            .position(|w| w.client == client && w.iova == iova && w.size == size)
            .ok_or(libc::ENOENT)?;
        dma.remove(i);
        Ok(())
    }

    /// Removes the window of exactly `iova` and `size`, whichever client
    /// mapped it (ENOENT otherwise).
    pub fn dma_unmap_any(&self, iova: u64, size: u64) -> Result<(), i32> {
        let mut dma = self.dma.write().unwrap();
        let i = dma
            .iter()
            .position(|w| w.iova == iova && w.size == size)
            .ok_or(libc::ENOENT)?;
        dma.remove(i);
        Ok(())
    }

    /// Removes every window of `client`.
    pub fn dma_unmap_all(&self, client: ClientId) {
        self.dma.write().unwrap().retain(|w| w.client != client);
    }

    /// Number of DMA windows.
    pub fn dma_windows(&self) -> usize {
        self.dma.read().unwrap().len()
    }

    /// One DMA access of `len` bytes at `iova`, split over the windows
    /// that cover it; `f` does each piece with (window, offset in window,
    /// range in the caller's buffer).
    fn dma_walk(
        &self,
        iova: u64,
        len: usize,
        write: bool,
        mut f: impl FnMut(&DmaWindow, u64, std::ops::Range<usize>) -> Result<(), IommuFault>,
    ) -> Result<(), IommuFault> {
        let dma = self.dma.read().unwrap();
        let mut done = 0usize;
        let result = (|| {
            while done < len {
                let at = iova.checked_add(done as u64).ok_or(IommuFault::Unmapped {
                    iova,
                    len: len as u64,
                })?;
                let w = dma
                    .iter()
                    .find(|w| w.iova <= at && at < w.iova + w.size)
                    .ok_or(IommuFault::Unmapped {
                        iova: at,
                        len: (len - done) as u64,
                    })?;
                let need = if write {
                    proto::DMA_FLAG_WRITE
                } else {
                    proto::DMA_FLAG_READ
                };
                if w.flags & need == 0 {
                    return Err(IommuFault::Permission { iova: at, write });
                }
                let n = ((w.iova + w.size - at) as usize).min(len - done);
                f(w, at - w.iova, done..done + n)?;
                done += n;
            }
            Ok(())
        })();
        if result.is_err() {
            self.counters.lock().unwrap().dma_faults += 1;
        }
        result
    }
}

/// The size of the file behind `fd`.
fn file_size(fd: &OwnedFd) -> Option<u64> {
    // SAFETY: stat is plain data; fstat fills it for an fd we hold.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    (unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } == 0).then_some(st.st_size as u64)
}

impl Host for ServerHost {
    fn signal(&self, index: IrqIndex, vector: u32) -> bool {
        self.signal_raw(slot(index) as u32, vector)
    }

    fn enabled(&self, index: IrqIndex) -> bool {
        let irqs = self.irqs.lock().unwrap();
        irqs.index[slot(index)].fds.iter().any(Option::is_some)
    }

    fn set_intx(&self, level: bool) {
        let mut irqs = self.irqs.lock().unwrap();
        irqs.intx_level = level;
        if !level || irqs.intx_masked {
            return;
        }
        let fired = match irqs.index[proto::IRQ_INTX as usize].fds.first() {
            Some(Some((_, fd))) => signal_fd(fd),
            _ => false,
        };
        if fired {
            irqs.intx_masked = true;
            drop(irqs);
            self.counters.lock().unwrap().irqs_signalled += 1;
        }
    }

    fn dma_read(&self, iova: u64, buf: &mut [u8]) -> Result<(), IommuFault> {
        let len = buf.len();
        let mut messages = Vec::new();
        self.dma_walk(iova, len, false, |w, off, r| match &w.backing {
            Backing::File(fd, base) => {
                self.counters.lock().unwrap().dma_file += 1;
                pread_all(fd.as_raw_fd(), &mut buf[r], base + off)
                    .map_err(|_| IommuFault::Gone { iova: w.iova + off })
            }
            Backing::Messages(out) => {
                messages.push((out.clone(), w.iova + off, r));
                Ok(())
            }
        })?;
        // By message, outside the table's lock: the client may unmap
        // while it answers.
        for (out, at, r) in messages {
            self.counters.lock().unwrap().dma_messages += 1;
            let out = out.upgrade().ok_or(IommuFault::Gone { iova: at })?;
            out.dma_read(at, &mut buf[r])
                .map_err(|_| IommuFault::Gone { iova: at })?;
        }
        Ok(())
    }

    fn dma_write(&self, iova: u64, data: &[u8]) -> Result<(), IommuFault> {
        let mut messages = Vec::new();
        self.dma_walk(iova, data.len(), true, |w, off, r| match &w.backing {
            Backing::File(fd, base) => {
                self.counters.lock().unwrap().dma_file += 1;
                let at = base + off;
                // pwrite past the end would grow the client's file: the
                // memory behind the window is gone.
                match file_size(fd) {
                    Some(size) if at + (r.len() as u64) <= size => {}
                    _ => return Err(IommuFault::Gone { iova: w.iova + off }),
                }
                pwrite_all(fd.as_raw_fd(), &data[r], at)
                    .map_err(|_| IommuFault::Gone { iova: w.iova + off })
            }
            Backing::Messages(out) => {
                messages.push((out.clone(), w.iova + off, r));
                Ok(())
            }
        })?;
        for (out, at, r) in messages {
            self.counters.lock().unwrap().dma_messages += 1;
            let out = out.upgrade().ok_or(IommuFault::Gone { iova: at })?;
            out.dma_write(at, &data[r])
                .map_err(|_| IommuFault::Gone { iova: at })?;
        }
        Ok(())
    }
}
