//! Memory-management system calls: memfd, mmap, madvise, munmap, and the
//! process_vm_readv/writev probe. Each unsafe call sits in one short function
//! that states why it is sound.

use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::mm::HUGE_SIZE;

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// A memfd of `size` bytes, every byte allocated up front, so that no hole
/// can ever be mapped behind the memory gate (UFFDIO_CONTINUE over a hole
/// fails with EFAULT).
pub fn memfd(name: &str, size: u64) -> Result<OwnedFd, i32> {
    let cname = std::ffi::CString::new(name).map_err(|_| libc::EINVAL)?;
    // SAFETY: `cname` is a valid NUL-terminated string; the returned fd is new.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: a fresh fd, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: plain syscalls on an fd we own.
    let rc = unsafe { libc::fallocate(fd.as_raw_fd(), 0, 0, size as libc::off_t) };
    if rc < 0 {
        return Err(errno());
    }
    Ok(fd)
}

/// Maps `len` bytes of `fd` at `offset`, MAP_SHARED, PROT_NONE (open it
/// with [`protect`]). Mappings of 2 MiB or more start on a 2 MiB boundary
/// (as Linux 6.12 places BAR mappings), so that chunked fills line up with
/// PMDs.
pub fn map_shared(fd: &OwnedFd, offset: u64, len: usize) -> Result<usize, i32> {
    let align = if len >= HUGE_SIZE { HUGE_SIZE } else { 0 };
    let prot = libc::PROT_NONE;
    // Reserve len + align bytes of nothing, then place the view inside.
    // SAFETY: an anonymous PROT_NONE reservation at an address of the
    // kernel's choosing aliases nothing.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len + align,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(errno());
    }
    let base = base as usize;
    let start = if align > 0 {
        (base + align - 1) & !(align - 1)
    } else {
        base
    };
    // SAFETY: [start, start + len) lies inside the reservation we own, so
    // MAP_FIXED replaces only our own PROT_NONE pages.
    let addr = unsafe {
        libc::mmap(
            start as *mut libc::c_void,
            len,
            prot,
            libc::MAP_SHARED | libc::MAP_FIXED,
            fd.as_raw_fd(),
            offset as libc::off_t,
        )
    };
    if addr == libc::MAP_FAILED {
        let e = errno();
        let _ = unmap(base..base + len + align);
        return Err(e);
    }
    // Give back the slack on both sides.
    if start > base {
        unmap(base..start)?;
    }
    if base + len + align > start + len {
        unmap(start + len..base + len + align)?;
    }
    Ok(start)
}

/// Makes `range` readable, and writable if asked.
pub fn protect(range: Range<usize>, writable: bool) -> Result<(), i32> {
    let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
    // SAFETY: changes the protection of a mapping barmap created and owns.
    let rc = unsafe {
        libc::mprotect(
            range.start as *mut libc::c_void,
            range.end - range.start,
            prot,
        )
    };
    if rc < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// Drops every page and poison marker in `range`; device memory stays.
pub fn zap(range: Range<usize>) -> Result<(), i32> {
    // SAFETY: MADV_DONTNEED on a MAP_SHARED file view only drops page-table
    // entries; the memfd keeps the data and Rust holds no references into
    // device mappings (access is volatile through raw pointers).
    let rc = unsafe {
        libc::madvise(
            range.start as *mut libc::c_void,
            range.end - range.start,
            libc::MADV_DONTNEED,
        )
    };
    if rc < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// Unmaps `range`.
pub fn unmap(range: Range<usize>) -> Result<(), i32> {
    // SAFETY: callers pass only ranges of mappings barmap created and owns;
    // no Rust reference points into them.
    let rc = unsafe { libc::munmap(range.start as *mut libc::c_void, range.end - range.start) };
    if rc < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// Reads `buf.len()` bytes of `fd` at `offset`.
pub fn pread_all(fd: &OwnedFd, mut offset: u64, mut buf: &mut [u8]) -> Result<(), i32> {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe {
            libc::pread(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                offset as libc::off_t,
            )
        };
        if n <= 0 {
            return Err(if n == 0 { libc::EIO } else { errno() });
        }
        buf = &mut buf[n as usize..];
        offset += n as u64;
    }
    Ok(())
}

/// Writes `buf` to `fd` at `offset`.
pub fn pwrite_all(fd: &OwnedFd, mut offset: u64, mut buf: &[u8]) -> Result<(), i32> {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for reads of its length.
        let n = unsafe {
            libc::pwrite(
                fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                offset as libc::off_t,
            )
        };
        if n <= 0 {
            return Err(if n == 0 { libc::EIO } else { errno() });
        }
        buf = &buf[n as usize..];
        offset += n as u64;
    }
    Ok(())
}

/// Copies `len` bytes from `remote` in this process into `local` (or the
/// other way round when `write`) through process_vm_readv/writev: the kernel
/// touches `remote` on our behalf, so a fault there is served like any other,
/// and a poisoned or unmapped page returns EFAULT instead of a signal.
pub fn probe(remote: usize, local: *mut u8, len: usize, write: bool) -> Result<(), i32> {
    let local_iov = libc::iovec {
        iov_base: local.cast(),
        iov_len: len,
    };
    let remote_iov = libc::iovec {
        iov_base: remote as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: `local` is valid for `len` bytes (the caller's buffer);
    // `remote` is only accessed by the kernel, which checks it and reports
    // EFAULT instead of faulting us.
    let n = unsafe {
        let pid = libc::getpid();
        if write {
            libc::process_vm_writev(pid, &local_iov, 1, &remote_iov, 1, 0)
        } else {
            libc::process_vm_readv(pid, &local_iov, 1, &remote_iov, 1, 0)
        }
    };
    if n < 0 {
        Err(errno())
    } else if (n as usize) < len {
        Err(libc::EFAULT)
    } else {
        Ok(())
    }
}
