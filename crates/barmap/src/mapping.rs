//! A live BAR mapping: its address, volatile accessors, checked probes, and
//! (partial) unmap.

use std::sync::Arc;

use barmap_target::touch;

use crate::device::Inner;
use crate::error::{Error, Result};
use crate::fault::MapEntry;

/// A MAP_SHARED view of part of a BAR, registered with the device's
/// userfaultfd. Pages are mapped on first touch by the fault service and
/// revoked when device memory is disabled.
///
/// Touching a revoked page raises a real SIGBUS in the touching thread, as
/// with the kernel's vfio-pci. [`Mapping::try_read`]/[`Mapping::try_write`]
/// and [`Mapping::touch_u64`] report it as an error instead.
///
/// Dropping the mapping unmaps what is left of it.
pub struct Mapping {
    inner: Arc<Inner>,
    entry: Arc<MapEntry>,
}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = self.entry.info();
        f.debug_struct("Mapping")
            .field("id", &i.id)
            .field("addr", &format_args!("{:#x}", i.start))
            .field("len", &i.len)
            .field("region", &i.region)
            .field("offset", &i.offset)
            .finish()
    }
}

impl Mapping {
    pub(crate) fn new(inner: Arc<Inner>, entry: Arc<MapEntry>) -> Self {
        Mapping { inner, entry }
    }

    /// First byte's address.
    pub fn addr(&self) -> usize {
        self.entry.info().start
    }

    /// Length in bytes, holes from partial unmaps included.
    pub fn len(&self) -> usize {
        self.entry.info().len
    }

    /// Always false: a mapping has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// BAR index.
    pub fn region(&self) -> u32 {
        self.entry.info().region
    }

    /// The smallest unit the fault path maps and revokes in this mapping:
    /// 4 KiB, or 2 MiB on a BAR backed by huge pages.
    pub fn page_size(&self) -> usize {
        self.entry.info().page_size
    }

    /// Offset into the BAR of the first byte.
    pub fn offset(&self) -> u64 {
        self.entry.info().offset
    }

    /// Raw pointer to the first byte, for callers that do their own volatile
    /// or atomic access.
    pub fn as_ptr(&self) -> *mut u8 {
        self.addr() as *mut u8
    }

    fn check(&self, offset: usize, size: usize) -> usize {
        assert!(
            offset % size == 0 && offset + size <= self.len(),
            "access of {size} bytes at {offset:#x} outside or misaligned in a mapping of {:#x}",
            self.len()
        );
        self.addr() + offset
    }

    /// Volatile 64-bit read at `offset` (aligned, in bounds: else panics).
    /// A revoked page raises SIGBUS, as on real hardware.
    pub fn read_u64(&self, offset: usize) -> u64 {
        let p = self.check(offset, 8) as *const u64;
        // SAFETY: in bounds and aligned (checked); device memory is only ever
        // accessed through raw volatile operations, never Rust references.
        unsafe { p.read_volatile() }
    }

    /// Volatile 64-bit write at `offset`; see [`Mapping::read_u64`].
    pub fn write_u64(&self, offset: usize, value: u64) {
        assert!(self.entry.info().writable, "write to a read-only mapping");
        let p = self.check(offset, 8) as *mut u64;
        // SAFETY: as for read_u64; the mapping is writable (checked).
        unsafe { p.write_volatile(value) }
    }

    /// Volatile 32-bit read at `offset`; see [`Mapping::read_u64`].
    pub fn read_u32(&self, offset: usize) -> u32 {
        let p = self.check(offset, 4) as *const u32;
        // SAFETY: as for read_u64.
        unsafe { p.read_volatile() }
    }

    /// Volatile 32-bit write at `offset`; see [`Mapping::read_u64`].
    pub fn write_u32(&self, offset: usize, value: u32) {
        assert!(self.entry.info().writable, "write to a read-only mapping");
        let p = self.check(offset, 4) as *mut u32;
        // SAFETY: as for write_u64.
        unsafe { p.write_volatile(value) }
    }

    /// Reads a u64 and reports a SIGBUS (revoked memory) or SIGSEGV (an
    /// unmapped hole) as an error instead of dying: the thread really takes
    /// the signal, and barmap-target's exception table recovers it.
    pub fn touch_u64(&self, offset: usize) -> std::result::Result<u64, touch::Fault> {
        let p = self.check(offset, 8) as *const u64;
        // SAFETY: in bounds and aligned; the touch module handles faults.
        unsafe { touch::read_u64(p) }
    }

    /// Writes a u64, reporting a SIGBUS/SIGSEGV as an error; see
    /// [`Mapping::touch_u64`].
    pub fn touch_write_u64(
        &self,
        offset: usize,
        value: u64,
    ) -> std::result::Result<(), touch::Fault> {
        assert!(self.entry.info().writable, "write to a read-only mapping");
        let p = self.check(offset, 8) as *mut u64;
        // SAFETY: as for touch_u64; the mapping is writable.
        unsafe { touch::write_u64(p, value) }
    }

    /// Copies mapping bytes at `offset` into `buf` through the kernel
    /// (process_vm_readv): a page not yet mapped is faulted in as usual; a
    /// revoked or unmapped page gives [`Error::Fault`] instead of SIGBUS.
    /// After the device is dropped: [`Error::DeviceGone`].
    ///
    /// With a userfaultfd in user-mode-only mode (unprivileged fallback) the
    /// kernel does not forward its own faults, so only pages already mapped
    /// can be probed.
    pub fn try_read(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.probe(offset, buf.as_mut_ptr(), buf.len(), false)
    }

    /// Copies `data` into the mapping at `offset`; see [`Mapping::try_read`].
    pub fn try_write(&self, offset: usize, data: &[u8]) -> Result<()> {
        if !self.entry.info().writable {
            return Err(Error::ReadOnly(self.region()));
        }
        self.probe(offset, data.as_ptr() as *mut u8, data.len(), true)
    }

    fn probe(&self, offset: usize, local: *mut u8, len: usize, write: bool) -> Result<()> {
        if self.inner.core.gate_state().gone {
            return Err(Error::DeviceGone);
        }
        if offset.checked_add(len).is_none_or(|end| end > self.len()) {
            return Err(Error::NotMapped { offset, len });
        }
        crate::os::probe(self.addr() + offset, local, len, write)
            .map_err(|errno| Error::Fault { offset, errno })
    }

    /// Unmaps `len` bytes at `offset` (aligned to the region's page size:
    /// 4 KiB, or 2 MiB on a huge-page BAR); the rest of the mapping keeps
    /// working. Unmapping a range that is not mapped (a double unmap) fails
    /// with [`Error::NotMapped`] and changes nothing.
    pub fn unmap(&self, offset: usize, len: usize) -> Result<()> {
        self.inner.check_owner()?;
        if len == 0 {
            return Err(Error::ZeroLength);
        }
        let page_size = self.page_size();
        if offset % page_size != 0 || len % page_size != 0 {
            return Err(Error::Unaligned {
                offset: offset as u64,
                len,
                page_size,
            });
        }
        if offset.checked_add(len).is_none_or(|end| end > self.len()) {
            return Err(Error::NotMapped { offset, len });
        }
        let start = self.addr() + offset;
        self.inner
            .core
            .unmap(&self.entry, start..start + len)
            .map(|_| ())
            .map_err(|e| match e {
                crate::mm::MmError::Os(errno) => Error::os("munmap")(errno),
                _ => Error::NotMapped { offset, len },
            })
    }

    /// Whether the page at `offset` is still mapped (not cut by unmap).
    pub fn is_mapped(&self, offset: usize) -> bool {
        // Let a munmap or mremap the process just made reach the core.
        crate::mm::Mm::quiesce(self.inner.core.mm());
        let addr = self.addr() + offset;
        self.entry.live_ranges().iter().any(|r| r.contains(&addr))
    }
}

impl Mapping {
    /// The region offset that address `addr` maps, if `addr` lies in a part
    /// of this mapping that is still mapped (after a munmap or mremap the
    /// process made: those events land first, so an address the process
    /// unmapped and reused is never taken for this mapping's).
    pub fn region_offset_at(&self, addr: usize) -> Option<u64> {
        crate::mm::Mm::quiesce(self.inner.core.mm());
        self.entry.live_parts_at(addr)
    }

    /// Whether no part of the mapping is left (every byte unmapped, by
    /// [`Mapping::unmap`] or by the process's own munmap).
    pub fn is_gone(&self) -> bool {
        crate::mm::Mm::quiesce(self.inner.core.mm());
        self.entry.live_ranges().is_empty()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.inner.check_owner().is_err() {
            // A forked child has no copy of the view (MADV_DONTFORK), and
            // barmap's locks may have been copied held: nothing to undo,
            // and nothing of the device may be dropped either.
            self.inner.leak_in_child();
            return;
        }
        // The process may have just unmapped or moved part of it: let
        // those events land before reading what is left, and read again
        // after each unmap (a part that went meanwhile is not an error).
        crate::mm::Mm::quiesce(self.inner.core.mm());
        // Bounded: a part that cannot be unmapped is reported, not retried
        // for ever.
        for _ in 0..64 {
            let Some(part) = self.entry.live_ranges().into_iter().next() else {
                break;
            };
            match self.inner.core.unmap(&self.entry, part) {
                Ok(_) | Err(crate::mm::MmError::Gone) => {}
                Err(e) => {
                    tracing::error!(error = %e, "unmap on drop failed");
                    break;
                }
            }
        }
    }
}
