//! Interrupts as vfio-pci exposes them: per index (INTx, MSI, MSI-X, ERR,
//! REQ) a number of vectors, each signalled through the eventfd that
//! `VFIO_DEVICE_SET_IRQS` installed.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use barmap_vfio::uapi as v;

use crate::{user, Errno};

/// Vectors per index of the default model: one INTx pin, one MSI vector,
/// eight MSI-X vectors, the error and request notifiers.
pub const COUNTS: [u32; 5] = [1, 1, 8, 1, 1];

/// The eventfds of one device's interrupts.
#[derive(Debug)]
pub struct Irqs {
    /// Vectors per index (INTx, MSI, MSI-X, ERR, REQ).
    counts: [u32; 5],
    /// Per index, per vector: the trigger eventfd (a dup of the program's).
    triggers: [Vec<Option<OwnedFd>>; 5],
    /// INTx is masked (it masks itself when it fires).
    intx_masked: bool,
    /// The device asserts its INTx line (level-triggered: an unmask while
    /// it is asserted fires again).
    intx_level: bool,
    /// What is enabled: INTx, MSI or MSI-X (vfio-pci's `irq_type`), or
    /// nothing.
    irq_type: Option<u32>,
    /// The device's server signals the eventfds itself (a device served
    /// over vfio-user): `DATA_NONE` and `DATA_BOOL` triggers are recorded
    /// here but not fired a second time.
    served: bool,
}

impl Default for Irqs {
    /// The default model's interrupts ([`COUNTS`]).
    fn default() -> Self {
        Irqs::new(COUNTS)
    }
}

/// The flags `VFIO_DEVICE_GET_IRQ_INFO` reports for `index`.
pub fn info_flags(index: u32) -> u32 {
    match index {
        v::VFIO_PCI_INTX_IRQ_INDEX => {
            v::VFIO_IRQ_INFO_EVENTFD | v::VFIO_IRQ_INFO_MASKABLE | v::VFIO_IRQ_INFO_AUTOMASKED
        }
        v::VFIO_PCI_MSI_IRQ_INDEX | v::VFIO_PCI_MSIX_IRQ_INDEX => {
            v::VFIO_IRQ_INFO_EVENTFD | v::VFIO_IRQ_INFO_NORESIZE
        }
        _ => v::VFIO_IRQ_INFO_EVENTFD,
    }
}

fn signal(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a valid u64 to an eventfd we own.
    unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

/// Whether `fd` is an eventfd (vfio-pci takes an eventfd context from it
/// and refuses anything else with EINVAL).
fn is_eventfd(fd: i32) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .is_ok_and(|p| p.as_os_str() == "anon_inode:[eventfd]")
}

fn dup(fd: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: F_GETFD on any fd number: its flags, or -1 (EBADF).
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(Errno::EBADF);
    }
    if !is_eventfd(fd) {
        return Err(Errno::EINVAL);
    }
    // SAFETY: F_DUPFD_CLOEXEC on any fd number returns a new fd or -1
    // (EBADF for a closed one).
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        return Err(Errno::EBADF);
    }
    // SAFETY: a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

impl Irqs {
    /// A device with `counts` vectors per index (INTx, MSI, MSI-X, ERR,
    /// REQ), none enabled.
    pub fn new(counts: [u32; 5]) -> Irqs {
        Irqs {
            counts,
            triggers: Default::default(),
            intx_masked: false,
            intx_level: false,
            irq_type: None,
            served: false,
        }
    }

    /// The record of a device whose server signals the eventfds itself.
    pub fn served(counts: [u32; 5]) -> Irqs {
        Irqs {
            served: true,
            ..Irqs::new(counts)
        }
    }

    /// Vectors of `index` (`VFIO_DEVICE_GET_IRQ_INFO`'s count).
    pub fn count(&self, index: u32) -> u32 {
        self.counts.get(index as usize).copied().unwrap_or(0)
    }

    /// Whether the program gave a vector of `index` an eventfd.
    pub fn is_enabled(&self, index: u32) -> bool {
        (index as usize) < self.triggers.len() && self.enabled(index as usize)
    }

    /// The device's INTx line goes to `level`: asserting it fires the INTx
    /// eventfd unless INTx is masked (firing masks it).
    pub fn set_intx(&mut self, level: bool) {
        let rising = level && !self.intx_level;
        self.intx_level = level;
        if rising {
            self.raise(v::VFIO_PCI_INTX_IRQ_INDEX, 0);
        }
    }

    /// Whether any vector of `index` is enabled.
    fn enabled(&self, index: usize) -> bool {
        self.triggers[index].iter().any(Option::is_some)
    }

    /// Raises vector `vector` of `index` (a device model's interrupt):
    /// returns whether an eventfd was signalled.
    pub fn raise(&mut self, index: u32, vector: u32) -> bool {
        let i = index as usize;
        if index == v::VFIO_PCI_INTX_IRQ_INDEX {
            if self.intx_masked {
                return false;
            }
            self.intx_masked = true; // automasked
        }
        match self.triggers.get(i).and_then(|t| t.get(vector as usize)) {
            Some(Some(fd)) => {
                signal(fd);
                true
            }
            _ => false,
        }
    }

    /// Tears every vector down (device release).
    pub fn clear(&mut self) {
        *self = Irqs {
            served: self.served,
            ..Irqs::new(self.counts)
        };
    }

    /// Whether vector `vector` of `index` has a trigger eventfd.
    pub fn has_trigger(&self, index: u32, vector: u32) -> bool {
        self.triggers
            .get(index as usize)
            .and_then(|t| t.get(vector as usize))
            .is_some_and(Option::is_some)
    }

    /// Forgets every eventfd of `index` (and that the index is enabled):
    /// for a request a vfio-user server refused after the checks here
    /// passed ([`crate::remote`]).
    pub fn clear_index(&mut self, index: u32) {
        if let Some(t) = self.triggers.get_mut(index as usize) {
            t.clear();
        }
        if self.irq_type == Some(index) {
            self.irq_type = None;
        }
    }

    /// `VFIO_DEVICE_SET_IRQS`, with the kernel's checks in its order
    /// (`vfio_pci_ioctl_set_irqs`, `vfio_set_irqs_validate_and_prepare`,
    /// `vfio_pci_set_irqs_ioctl` and its handlers); `arg` points at the
    /// program's `struct vfio_irq_set`. A failed call changes nothing.
    pub fn set(&mut self, arg: usize) -> Result<i64, Errno> {
        const MINSZ: u32 = 20;
        let hdr: v::VfioIrqSet = user::read_struct(arg, MINSZ as usize)?;
        let max = self.count(hdr.index);
        if hdr.argsz < MINSZ
            || hdr.index >= v::VFIO_PCI_NUM_IRQS
            || hdr.count >= u32::MAX - hdr.start
            || hdr.flags & !(v::VFIO_IRQ_SET_DATA_TYPE_MASK | v::VFIO_IRQ_SET_ACTION_TYPE_MASK) != 0
        {
            return Err(Errno::EINVAL);
        }
        if hdr.start >= max || hdr.start + hdr.count > max {
            return Err(Errno::EINVAL);
        }
        let data_type = hdr.flags & v::VFIO_IRQ_SET_DATA_TYPE_MASK;
        let per = match data_type {
            v::VFIO_IRQ_SET_DATA_NONE => 0,
            v::VFIO_IRQ_SET_DATA_BOOL => 1,
            v::VFIO_IRQ_SET_DATA_EVENTFD => 4,
            _ => return Err(Errno::EINVAL),
        };
        let data_len = per * hdr.count as usize;
        if per > 0 && ((hdr.argsz - MINSZ) as usize) < data_len {
            return Err(Errno::EINVAL);
        }
        let data = user::read(arg + MINSZ as usize, data_len)?;
        let (start, count) = (hdr.start as usize, hdr.count as usize);
        let action = hdr.flags & v::VFIO_IRQ_SET_ACTION_TYPE_MASK;
        let (mask, unmask, trigger) = (
            v::VFIO_IRQ_SET_ACTION_MASK,
            v::VFIO_IRQ_SET_ACTION_UNMASK,
            v::VFIO_IRQ_SET_ACTION_TRIGGER,
        );
        let req = Req {
            index: hdr.index,
            data_type,
            start,
            count,
            data: &data,
        };
        // No handler for the index and action (two action bits, none, or
        // a mask of MSI, MSI-X, ERR or REQ): ENOTTY.
        match hdr.index {
            v::VFIO_PCI_INTX_IRQ_INDEX if action == mask || action == unmask => {
                self.intx_mask(&req, action == mask)
            }
            v::VFIO_PCI_INTX_IRQ_INDEX if action == trigger => self.intx_trigger(&req),
            v::VFIO_PCI_MSI_IRQ_INDEX | v::VFIO_PCI_MSIX_IRQ_INDEX if action == trigger => {
                self.msi_trigger(&req)
            }
            v::VFIO_PCI_ERR_IRQ_INDEX | v::VFIO_PCI_REQ_IRQ_INDEX if action == trigger => {
                self.single_trigger(&req)
            }
            _ => Err(Errno::ENOTTY),
        }
    }

    fn is_intx(&self) -> bool {
        self.irq_type == Some(v::VFIO_PCI_INTX_IRQ_INDEX)
    }

    /// `vfio_pci_set_intx_mask` / `vfio_pci_set_intx_unmask`.
    fn intx_mask(&mut self, r: &Req, mask: bool) -> Result<i64, Errno> {
        if !self.is_intx() || r.start != 0 || r.count != 1 {
            return Err(Errno::EINVAL);
        }
        match r.data_type {
            v::VFIO_IRQ_SET_DATA_EVENTFD if mask => Err(Errno::ENOTTY),
            // Unmask through an eventfd (an irqfd) is not emulated.
            v::VFIO_IRQ_SET_DATA_EVENTFD => Err(Errno::EINVAL),
            _ => {
                if r.data_type == v::VFIO_IRQ_SET_DATA_NONE || r.data[0] != 0 {
                    self.intx_masked = mask;
                    if !mask && self.intx_level {
                        // Still asserted: the unmask fires it again.
                        self.raise(v::VFIO_PCI_INTX_IRQ_INDEX, 0);
                    }
                }
                Ok(0)
            }
        }
    }

    /// `vfio_pci_set_intx_trigger`: EINVAL while MSI or MSI-X is enabled.
    fn intx_trigger(&mut self, r: &Req) -> Result<i64, Errno> {
        let served = self.served;
        let i = v::VFIO_PCI_INTX_IRQ_INDEX as usize;
        if self.is_intx() && r.count == 0 && r.data_type == v::VFIO_IRQ_SET_DATA_NONE {
            self.triggers[i].clear();
            self.intx_masked = false;
            self.irq_type = None;
            return Ok(0);
        }
        if !(self.is_intx() || self.irq_type.is_none()) || r.start != 0 || r.count != 1 {
            return Err(Errno::EINVAL);
        }
        if r.data_type == v::VFIO_IRQ_SET_DATA_EVENTFD {
            let fd = r.fd(0);
            let new = if fd >= 0 { Some(dup(fd)?) } else { None };
            if !self.is_intx() {
                self.irq_type = Some(v::VFIO_PCI_INTX_IRQ_INDEX);
                self.intx_masked = false;
            }
            self.triggers[i] = vec![new];
            return Ok(0);
        }
        if !self.is_intx() {
            return Err(Errno::EINVAL);
        }
        if r.data_type == v::VFIO_IRQ_SET_DATA_NONE || r.data[0] != 0 {
            // Loopback: signals the eventfd, masked or not.
            if let Some(Some(fd)) = self.triggers[i].first() {
                if !served {
                    signal(fd);
                }
            }
        }
        Ok(0)
    }

    /// `vfio_pci_set_msi_trigger`: EINVAL while another of INTx, MSI and
    /// MSI-X is enabled.
    fn msi_trigger(&mut self, r: &Req) -> Result<i64, Errno> {
        let served = self.served;
        let i = r.index as usize;
        let on = self.irq_type == Some(r.index);
        if on && r.count == 0 && r.data_type == v::VFIO_IRQ_SET_DATA_NONE {
            self.triggers[i].clear();
            self.irq_type = None;
            return Ok(0);
        }
        if !(on || self.irq_type.is_none()) {
            return Err(Errno::EINVAL);
        }
        if r.data_type == v::VFIO_IRQ_SET_DATA_EVENTFD {
            if !on && r.start + r.count == 0 {
                // vfio_msi_enable(start + count) asks for at least 1 and at
                // most 0 vectors.
                return Err(Errno(libc::ERANGE));
            }
            // Every fd is checked before anything changes (the kernel
            // unwinds the block on a bad one).
            let mut new = Vec::with_capacity(r.count);
            for k in 0..r.count {
                let fd = r.fd(k);
                new.push(if fd < 0 { None } else { Some(dup(fd)?) });
            }
            self.irq_type = Some(r.index);
            let t = &mut self.triggers[i];
            if t.len() < r.start + r.count {
                t.resize_with(r.start + r.count, || None);
            }
            for (k, fd) in new.into_iter().enumerate() {
                t[r.start + k] = fd;
            }
            return Ok(0);
        }
        if !on {
            return Err(Errno::EINVAL);
        }
        // DATA_NONE or DATA_BOOL: fire the vectors now, before the ioctl
        // returns, as vfio-pci does.
        for k in 0..r.count {
            if r.data_type == v::VFIO_IRQ_SET_DATA_BOOL && r.data[k] == 0 {
                continue;
            }
            if let Some(Some(fd)) = self.triggers[i].get(r.start + k) {
                if !served {
                    signal(fd);
                }
            }
        }
        Ok(0)
    }

    /// `vfio_pci_set_err_trigger` / `vfio_pci_set_req_trigger` through
    /// `vfio_pci_set_ctx_trigger_single`.
    fn single_trigger(&mut self, r: &Req) -> Result<i64, Errno> {
        let served = self.served;
        let i = r.index as usize;
        if r.start != 0 || r.count > 1 {
            return Err(Errno::EINVAL);
        }
        let current = self.triggers[i].first().and_then(Option::as_ref);
        match r.data_type {
            v::VFIO_IRQ_SET_DATA_NONE => {
                let Some(fd) = current else {
                    return Err(Errno::EINVAL);
                };
                if r.count > 0 {
                    if !served {
                        signal(fd);
                    }
                } else {
                    self.triggers[i].clear();
                }
                Ok(0)
            }
            v::VFIO_IRQ_SET_DATA_BOOL => {
                if r.count == 0 {
                    return Err(Errno::EINVAL);
                }
                if let Some(fd) = current.filter(|_| r.data[0] != 0) {
                    if !served {
                        signal(fd);
                    }
                }
                Ok(0)
            }
            _ => {
                if r.count == 0 {
                    return Err(Errno::EINVAL);
                }
                match r.fd(0) {
                    -1 => self.triggers[i].clear(),
                    fd if fd >= 0 => self.triggers[i] = vec![Some(dup(fd)?)],
                    _ => return Err(Errno::EINVAL),
                }
                Ok(0)
            }
        }
    }
}

/// One `SET_IRQS` request, validated.
struct Req<'a> {
    index: u32,
    data_type: u32,
    start: usize,
    count: usize,
    data: &'a [u8],
}

impl Req<'_> {
    /// The `k`th eventfd of the data.
    fn fd(&self, k: usize) -> i32 {
        let c = &self.data[k * 4..k * 4 + 4];
        i32::from_ne_bytes([c[0], c[1], c[2], c[3]])
    }
}
