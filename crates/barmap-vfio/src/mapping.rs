//! A BAR mapping through the device fd, and partial unmapping of it.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// A live MAP_SHARED mapping of (part of) a region. Dropping it unmaps
/// whatever pieces are still mapped.
#[derive(Debug)]
pub struct BarMapping {
    addr: usize,
    len: usize,
    /// Still-mapped pieces as (start, end) addresses, sorted, disjoint.
    live: Vec<(usize, usize)>,
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

/// mmap(2) returning the errno on failure.
///
/// # Safety
/// With MAP_FIXED, `addr..addr+len` must be address space this code owns
/// (a reservation it made), since whatever was there is replaced.
unsafe fn mmap(
    addr: usize,
    len: usize,
    prot: i32,
    flags: i32,
    fd: i32,
    offset: u64,
) -> io::Result<usize> {
    let p = libc::mmap(addr as *mut _, len, prot, flags, fd, offset as libc::off_t);
    if p == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(p as usize)
    }
}

/// munmap(2) returning the errno on failure.
///
/// # Safety
/// Nothing may still use `addr..addr+len`.
unsafe fn munmap(addr: usize, len: usize) -> io::Result<()> {
    if libc::munmap(addr as *mut _, len) != 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl BarMapping {
    /// Maps `len` bytes of `fd` at `file_offset`. With `align > 1` the
    /// address is aligned to `align`: an anonymous PROT_NONE reservation of
    /// `len + align` is made first, the device mapping is placed MAP_FIXED
    /// at the aligned address inside it, and the slack is released.
    pub(crate) fn new(
        fd: &OwnedFd,
        file_offset: u64,
        len: usize,
        writable: bool,
        align: usize,
    ) -> io::Result<Self> {
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        let fd = fd.as_raw_fd();
        let addr = if align > 1 && len > 0 {
            let span = len
                .checked_add(align)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
            // SAFETY: a fresh anonymous reservation; no MAP_FIXED.
            let base = unsafe {
                mmap(
                    0,
                    span,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )?
            };
            let start = base.next_multiple_of(align);
            // SAFETY: start..start+len lies inside the reservation made above.
            let mapped = unsafe {
                mmap(
                    start,
                    len,
                    prot,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    fd,
                    file_offset,
                )
            };
            // Release the slack (and, on failure, the whole reservation).
            let keep = match mapped {
                Ok(_) => (start, start + len),
                Err(_) => (start, start),
            };
            // SAFETY: the ranges released lie inside our reservation and are
            // used by nothing.
            unsafe {
                if keep.0 > base {
                    munmap(base, keep.0 - base)?;
                }
                let end = base + span;
                if end > keep.1 {
                    munmap(keep.1, end - keep.1)?;
                }
            }
            mapped?
        } else {
            // SAFETY: the kernel picks the address; nothing is replaced.
            unsafe { mmap(0, len, prot, libc::MAP_SHARED, fd, file_offset)? }
        };
        Ok(BarMapping {
            addr,
            len,
            live: vec![(addr, addr + len)],
        })
    }

    /// Maps `len` bytes of `fd` at `file_offset` at an address placed as
    /// `placement` says (a 2 MiB boundary, or 4 KiB past one), over a
    /// reservation of its own.
    pub(crate) fn placed(
        fd: &OwnedFd,
        file_offset: u64,
        len: usize,
        writable: bool,
        placement: barmap_target::Placement,
    ) -> io::Result<Self> {
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        let r = barmap_target::Reservation::new(len, placement)?;
        let at = r.addr;
        // SAFETY: at..at+len lies inside the reservation made above.
        let mapped = unsafe {
            mmap(
                at,
                len,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd.as_raw_fd(),
                file_offset,
            )
        };
        r.release(mapped.is_ok());
        let addr = mapped?;
        Ok(BarMapping {
            addr,
            len,
            live: vec![(addr, addr + len)],
        })
    }

    /// Start address.
    pub fn addr(&self) -> usize {
        self.addr
    }

    /// Length in bytes as mapped.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Unmaps `len` bytes at `offset` into the mapping (page-aligned; the
    /// kernel decides what is acceptable and answers with its errno). The
    /// rest stays mapped. A range outside the mapping is rejected with EINVAL
    /// without asking the kernel, since it could unmap someone else's memory.
    pub fn unmap_range(&mut self, offset: usize, len: usize) -> io::Result<()> {
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let (lo, hi) = (self.addr + offset, self.addr + end);
        // SAFETY: the range lies inside this mapping; the caller (through
        // &mut self) guarantees no reference into it is live.
        unsafe { munmap(lo, len)? };
        // The kernel unmaps whole pages: widen to page boundaries.
        let page = page_size();
        let (lo, hi) = (lo & !(page - 1), hi.next_multiple_of(page));
        let mut live = Vec::with_capacity(self.live.len() + 1);
        for &(s, e) in &self.live {
            if e <= lo || s >= hi {
                live.push((s, e));
                continue;
            }
            if s < lo {
                live.push((s, lo));
            }
            if e > hi {
                live.push((hi, e));
            }
        }
        self.live = live;
        Ok(())
    }
}

impl Drop for BarMapping {
    fn drop(&mut self) {
        for &(s, e) in &self.live {
            // SAFETY: each piece is still mapped by us and nothing borrows it
            // once the mapping is dropped. A failure here can only leak.
            let _ = unsafe { munmap(s, e - s) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    fn memfd(len: usize) -> OwnedFd {
        // SAFETY: plain syscalls; the fd is owned by the returned OwnedFd.
        unsafe {
            let fd = libc::memfd_create(c"barmap-vfio-test".as_ptr(), 0);
            assert!(fd >= 0);
            assert_eq!(libc::ftruncate(fd, len as libc::off_t), 0);
            OwnedFd::from_raw_fd(fd)
        }
    }

    #[test]
    fn an_aligned_mapping_lands_on_the_requested_boundary() {
        let fd = memfd(4 << 20);
        let m = BarMapping::new(&fd, 0, 4 << 20, true, 2 << 20).unwrap();
        assert_eq!(m.addr() % (2 << 20), 0);
        // SAFETY: the mapping is live and writable.
        unsafe {
            *(m.addr() as *mut u64) = 5;
            assert_eq!(*(m.addr() as *const u64), 5);
        }
    }

    #[test]
    fn placed_mappings_land_on_or_just_past_the_boundary() {
        use barmap_target::Placement;
        let fd = memfd(4 << 20);
        for p in Placement::BOTH {
            let m = BarMapping::placed(&fd, 0, 2 << 20, true, p).unwrap();
            assert_eq!(m.addr() % (2 << 20), p.skew());
            // SAFETY: the mapping is live and writable.
            unsafe {
                *((m.addr() + 4096) as *mut u64) = 7;
                assert_eq!(*((m.addr() + 4096) as *const u64), 7);
            }
        }
    }

    #[test]
    fn a_partial_unmap_leaves_the_rest_usable_and_tracked() {
        let fd = memfd(16 << 12);
        let mut m = BarMapping::new(&fd, 0, 16 << 12, false, 0).unwrap();
        m.unmap_range(4 << 12, 4 << 12).unwrap();
        assert_eq!(
            m.live,
            vec![
                (m.addr(), m.addr() + (4 << 12)),
                (m.addr() + (8 << 12), m.addr() + (16 << 12))
            ]
        );
        // SAFETY: the touched page is still mapped.
        unsafe { barmap_target::touch::read_u64((m.addr() + (8 << 12)) as *const u64).unwrap() };
        let hole = (m.addr() + (4 << 12)) as *const u64;
        // SAFETY: the touch accessor survives the SIGSEGV of the hole.
        let r = unsafe { barmap_target::touch::read_u64(hole) };
        assert_eq!(r, Err(barmap_target::touch::Fault::Sigsegv));
    }

    #[test]
    fn unmapping_outside_the_mapping_is_einval() {
        let fd = memfd(4 << 12);
        let mut m = BarMapping::new(&fd, 0, 4 << 12, false, 0).unwrap();
        let err = m.unmap_range(2 << 12, 4 << 12).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn mapping_a_bad_fd_offset_reports_the_kernel_errno() {
        let fd = memfd(4 << 12);
        // An offset that is not page aligned: the kernel says EINVAL.
        let err = BarMapping::new(&fd, 123, 4 << 12, false, 2 << 20).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }
}
