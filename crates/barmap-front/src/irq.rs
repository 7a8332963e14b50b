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
        *self = Irqs::new(self.counts);
    }

    /// Whether vector `vector` of `index` has a trigger eventfd.
    pub fn has_trigger(&self, index: u32, vector: u32) -> bool {
        self.triggers
            .get(index as usize)
            .and_then(|t| t.get(vector as usize))
            .is_some_and(Option::is_some)
    }

    /// `VFIO_DEVICE_SET_IRQS`, with the kernel's checks; `arg` points at
    /// the program's `struct vfio_irq_set`.
    pub fn set(&mut self, arg: usize) -> Result<i64, Errno> {
        const MINSZ: u32 = 20;
        let hdr: v::VfioIrqSet = user::read_struct(arg, MINSZ as usize)?;
        if hdr.argsz < MINSZ {
            return Err(Errno::EINVAL);
        }
        let data_type = hdr.flags & v::VFIO_IRQ_SET_DATA_TYPE_MASK;
        let action = hdr.flags & v::VFIO_IRQ_SET_ACTION_TYPE_MASK;
        if hdr.flags & !(v::VFIO_IRQ_SET_DATA_TYPE_MASK | v::VFIO_IRQ_SET_ACTION_TYPE_MASK) != 0
            || data_type.count_ones() != 1
            || action.count_ones() != 1
            || hdr.index >= v::VFIO_PCI_NUM_IRQS
        {
            return Err(Errno::EINVAL);
        }
        let max = self.counts[hdr.index as usize];
        let end = hdr.start.checked_add(hdr.count).ok_or(Errno::EINVAL)?;
        if max == 0 || end > max || (hdr.count == 0 && data_type != v::VFIO_IRQ_SET_DATA_NONE) {
            return Err(Errno::EINVAL);
        }
        let per = match data_type {
            v::VFIO_IRQ_SET_DATA_BOOL => 1,
            v::VFIO_IRQ_SET_DATA_EVENTFD => 4,
            _ => 0,
        };
        let data_len = per * hdr.count as usize;
        if (hdr.argsz as usize) < MINSZ as usize + data_len {
            return Err(Errno::EINVAL);
        }
        let data = user::read(arg + MINSZ as usize, data_len)?;
        let (start, count) = (hdr.start as usize, hdr.count as usize);
        match action {
            v::VFIO_IRQ_SET_ACTION_MASK | v::VFIO_IRQ_SET_ACTION_UNMASK => {
                // Only INTx can be masked through this interface (MSI and
                // MSI-X have no mask handler in vfio-pci: the ioctl fails).
                if hdr.index != v::VFIO_PCI_INTX_IRQ_INDEX {
                    return Err(Errno::EINVAL);
                }
                if data_type == v::VFIO_IRQ_SET_DATA_EVENTFD {
                    return Err(Errno::EINVAL); // unmask-by-eventfd: not emulated
                }
                let on = data_type == v::VFIO_IRQ_SET_DATA_NONE || data.first() == Some(&1);
                if on {
                    self.intx_masked = action == v::VFIO_IRQ_SET_ACTION_MASK;
                    if !self.intx_masked && self.intx_level {
                        // Still asserted: the unmask fires it again.
                        self.raise(v::VFIO_PCI_INTX_IRQ_INDEX, 0);
                    }
                }
                Ok(0)
            }
            _ => self.trigger(hdr.index, data_type, start, count, &data),
        }
    }

    fn trigger(
        &mut self,
        index: u32,
        data_type: u32,
        start: usize,
        count: usize,
        data: &[u8],
    ) -> Result<i64, Errno> {
        let i = index as usize;
        let msi_like = index == v::VFIO_PCI_MSI_IRQ_INDEX || index == v::VFIO_PCI_MSIX_IRQ_INDEX;
        match data_type {
            v::VFIO_IRQ_SET_DATA_NONE if count == 0 => {
                // Disable every vector of the index.
                self.triggers[i].clear();
                if index == v::VFIO_PCI_INTX_IRQ_INDEX {
                    self.intx_masked = false;
                }
                Ok(0)
            }
            v::VFIO_IRQ_SET_DATA_EVENTFD => {
                // MSI and MSI-X are exclusive, and exclusive with INTx.
                let other = |j: u32| j != index && self.enabled(j as usize);
                if msi_like
                    && (other(v::VFIO_PCI_MSI_IRQ_INDEX)
                        || other(v::VFIO_PCI_MSIX_IRQ_INDEX)
                        || other(v::VFIO_PCI_INTX_IRQ_INDEX))
                {
                    return Err(Errno::EINVAL);
                }
                let fds: Vec<i32> = data
                    .chunks_exact(4)
                    .map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                // Validate every fd before changing anything.
                let mut new = Vec::with_capacity(fds.len());
                for fd in &fds {
                    new.push(if *fd < 0 { None } else { Some(dup(*fd)?) });
                }
                let t = &mut self.triggers[i];
                if t.len() < start + count {
                    t.resize_with(start + count, || None);
                }
                for (k, fd) in new.into_iter().enumerate() {
                    t[start + k] = fd;
                }
                while t.last().is_some_and(Option::is_none) {
                    t.pop();
                }
                Ok(0)
            }
            _ => {
                // DATA_NONE or DATA_BOOL: fire the vectors now, before the
                // ioctl returns, as vfio-pci does.
                for k in 0..count {
                    if data_type == v::VFIO_IRQ_SET_DATA_BOOL && data.get(k) == Some(&0) {
                        continue;
                    }
                    if let Some(Some(fd)) = self.triggers[i].get(start + k) {
                        signal(fd);
                        if index == v::VFIO_PCI_INTX_IRQ_INDEX {
                            self.intx_masked = true;
                        }
                    }
                }
                Ok(0)
            }
        }
    }
}
