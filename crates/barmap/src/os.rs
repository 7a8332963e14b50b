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

/// `Ok` for a syscall's 0, the errno for its -1.
fn zero_or_errno(rc: libc::c_int) -> Result<(), i32> {
    if rc < 0 {
        Err(errno())
    } else {
        Ok(())
    }
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

/// A shmem memfd of `size` bytes with nothing allocated: every page is a
/// hole until [`allocate`] commits it (a `pread` of a hole reads zeros, a
/// `pwrite` allocates). Device memory is committed on demand this way
/// ([`crate::memory`]).
pub fn memfd_sparse(name: &str, size: u64) -> Result<OwnedFd, i32> {
    let cname = std::ffi::CString::new(name).map_err(|_| libc::EINVAL)?;
    // SAFETY: `cname` is a valid NUL-terminated string; the returned fd is new.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: a fresh fd, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let size = libc::off_t::try_from(size).map_err(|_| libc::EFBIG)?;
    // SAFETY: a plain syscall on an fd we own.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), size) } < 0 {
        return Err(errno());
    }
    Ok(fd)
}

/// Allocates (zero-filled) pages for `len` bytes of `fd` at `offset`
/// (`fallocate(2)`, mode 0); pages already allocated are kept as they are.
/// On failure shmem gives back what this call allocated.
pub fn allocate(fd: &OwnedFd, offset: u64, len: u64) -> Result<(), i32> {
    // SAFETY: a plain syscall on an fd the caller owns; no memory is passed.
    let rc =
        unsafe { libc::fallocate(fd.as_raw_fd(), 0, offset as libc::off_t, len as libc::off_t) };
    zero_or_errno(rc)
}

/// Frees the pages of `len` bytes of `fd` at `offset`, leaving a hole
/// (`FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`). Mappings of the range
/// lose their pages: the caller makes sure none is mapped.
pub fn punch(fd: &OwnedFd, offset: u64, len: u64) -> Result<(), i32> {
    // SAFETY: as in `allocate`.
    let rc = unsafe {
        libc::fallocate(
            fd.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    zero_or_errno(rc)
}

/// Bytes of `fd` that hold allocated blocks (`st_blocks * 512`).
pub fn allocated_bytes(fd: &OwnedFd) -> Result<u64, i32> {
    // SAFETY: fstat writes one `stat` into the zeroed struct we pass.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; the fd is the caller's.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
        return Err(errno());
    }
    Ok(st.st_blocks as u64 * 512)
}

/// The machine's `MemAvailable` (/proc/meminfo), bytes.
pub fn mem_available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// A memfd of `size` bytes backed by 2 MiB huge pages (hugetlbfs,
/// `MFD_HUGETLB | MFD_HUGE_2MB`), every huge page allocated up front like
/// [`memfd`]'s. `size` must be a multiple of [`HUGE_SIZE`]; the pages come
/// from the 2 MiB pool (`vm.nr_hugepages`), so allocation fails with ENOSPC
/// or ENOMEM when too few are free (see [`free_huge_pages`]). Such a memfd
/// cannot be written with `pwrite` (hugetlbfs has no write path): write
/// through a view ([`map_view`]).
pub fn memfd_hugetlb(name: &str, size: u64) -> Result<OwnedFd, i32> {
    if size % HUGE_SIZE as u64 != 0 {
        return Err(libc::EINVAL);
    }
    let cname = std::ffi::CString::new(name).map_err(|_| libc::EINVAL)?;
    let flags = libc::MFD_CLOEXEC | libc::MFD_HUGETLB | libc::MFD_HUGE_2MB;
    // SAFETY: `cname` is a valid NUL-terminated string; the returned fd is new.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), flags) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: a fresh fd, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: plain syscall on an fd we own.
    let rc = unsafe { libc::fallocate(fd.as_raw_fd(), 0, 0, size as libc::off_t) };
    if rc < 0 {
        return Err(errno());
    }
    Ok(fd)
}

/// 2 MiB huge pages free for new allocations now: the pool's free pages
/// minus those already promised to existing mappings
/// (/sys/kernel/mm/hugepages/hugepages-2048kB, or /proc/meminfo's
/// `HugePages_Free - HugePages_Rsvd` when 2 MiB is the default size).
/// `None` if the kernel has no 2 MiB pool.
pub fn free_huge_pages() -> Option<u64> {
    let sys = "/sys/kernel/mm/hugepages/hugepages-2048kB";
    let read = |f: &str| -> Option<u64> {
        std::fs::read_to_string(format!("{sys}/{f}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    if let (Some(free), Some(resv)) = (read("free_hugepages"), read("resv_hugepages")) {
        return Some(free.saturating_sub(resv));
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    if field("Hugepagesize:")? != (HUGE_SIZE >> 10) as u64 {
        return None;
    }
    Some(field("HugePages_Free:")?.saturating_sub(field("HugePages_Rsvd:").unwrap_or(0)))
}

/// Maps all `len` bytes of `fd` read-write, MAP_SHARED, without userfaultfd:
/// the device's own view of its memory (for region access to memory that
/// `pread`/`pwrite` cannot reach). Unmap it with [`unmap`].
pub fn map_view(fd: &OwnedFd, len: usize) -> Result<usize, i32> {
    // SAFETY: a new shared mapping at an address of the kernel's choosing
    // aliases no Rust object; it is accessed only through raw pointers.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        Err(errno())
    } else {
        Ok(addr as usize)
    }
}

/// Copies `buf.len()` bytes at `view + offset` into `buf`.
///
/// # Safety
/// `view` must be a live [`map_view`] mapping of at least
/// `offset + buf.len()` bytes (the caller checks the bounds).
pub unsafe fn view_read(view: usize, offset: usize, buf: &mut [u8]) {
    // SAFETY: in bounds of a live view (the caller's contract); the view is
    // never referenced by Rust, so `buf` cannot overlap it.
    unsafe {
        std::ptr::copy_nonoverlapping((view + offset) as *const u8, buf.as_mut_ptr(), buf.len())
    }
}

/// Copies `data` to `view + offset`.
///
/// # Safety
/// As [`view_read`].
pub unsafe fn view_write(view: usize, offset: usize, data: &[u8]) {
    // SAFETY: as in view_read.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), (view + offset) as *mut u8, data.len()) }
}

/// Maps `len` bytes of `fd` at `offset`, MAP_SHARED, PROT_NONE (open it
/// with [`protect`]). Mappings of 2 MiB or more start on a 2 MiB boundary
/// (as Linux 6.12 places BAR mappings), so that chunked fills line up with
/// PMDs.
pub fn map_shared(fd: &OwnedFd, offset: u64, len: usize) -> Result<usize, i32> {
    map_shared_at(fd, offset, len, None)
}

/// A PROT_NONE MAP_SHARED view of `len` bytes of `fd` at `offset`: at an
/// address of barmap's choosing (2 MiB aligned when `len` allows it) if
/// `fixed` is None, else exactly at `fixed`, replacing whatever the process
/// had mapped there (its own `MAP_FIXED` request, over its own reservation).
pub fn map_shared_at(
    fd: &OwnedFd,
    offset: u64,
    len: usize,
    fixed: Option<usize>,
) -> Result<usize, i32> {
    if let Some(at) = fixed {
        // SAFETY: MAP_FIXED at an address the caller named for its own
        // mapping: only what the process itself mapped there is replaced,
        // as mmap(2) with MAP_FIXED does for any program.
        let addr = unsafe {
            libc::mmap(
                at as *mut libc::c_void,
                len,
                libc::PROT_NONE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        return if addr == libc::MAP_FAILED {
            Err(errno())
        } else {
            Ok(addr as usize)
        };
    }
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
    mprotect(
        range,
        libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 },
    )
}

/// Makes `range` inaccessible (a touch is SIGSEGV).
pub fn protect_none(range: Range<usize>) -> Result<(), i32> {
    mprotect(range, libc::PROT_NONE)
}

fn mprotect(range: Range<usize>, prot: i32) -> Result<(), i32> {
    // SAFETY: changes the protection of a mapping barmap created and owns.
    let rc = unsafe {
        libc::mprotect(
            range.start as *mut libc::c_void,
            range.end - range.start,
            prot,
        )
    };
    zero_or_errno(rc)
}

/// Drops every page and poison marker in `range`, locked (mlock) or not;
/// device memory stays. MADV_DONTNEED_LOCKED (Linux 5.18) where the kernel
/// has it, else MADV_DONTNEED, which fails with EINVAL on a locked range.
pub fn zap(range: Range<usize>) -> Result<(), i32> {
    match advise(range.clone(), libc::MADV_DONTNEED_LOCKED) {
        Err(libc::EINVAL) => advise(range, libc::MADV_DONTNEED),
        other => other,
    }
}

/// madvise(`advice`) over `range` of a barmap mapping.
pub fn advise(range: Range<usize>, advice: i32) -> Result<(), i32> {
    // SAFETY: callers pass ranges of mappings barmap created, and advice
    // that only drops page-table entries of a MAP_SHARED file view (the
    // memfd keeps the data) or sets vma flags; Rust holds no references
    // into device mappings (access is volatile through raw pointers).
    let rc = unsafe {
        libc::madvise(
            range.start as *mut libc::c_void,
            range.end - range.start,
            advice,
        )
    };
    zero_or_errno(rc)
}

/// Whether [`Device::map`](crate::Device::map) locks its mappings on
/// fault; see [`set_lock_on_fault`].
static LOCK_ON_FAULT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// For benchmarks only: whether mappings made from now on in this process
/// are locked on fault ([`lock_on_fault`], the default: `true`). `false`
/// changes what the process sees: its own MADV_DONTNEED, MADV_REMOVE,
/// MADV_COLD and MADV_PAGEOUT on a BAR mapping then succeed (and drop or
/// punch device pages) instead of failing with EINVAL as on vfio-pci's
/// VM_PFNMAP mapping. It exists so that a bench can state what the lock
/// costs a fill (each page the fill maps is mlocked: moved to the
/// unevictable list under the LRU lock); no policy or front end uses it.
pub fn set_lock_on_fault(on: bool) {
    LOCK_ON_FAULT.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether mappings made now are locked on fault (see
/// [`set_lock_on_fault`]).
pub fn lock_on_fault_enabled() -> bool {
    LOCK_ON_FAULT.load(std::sync::atomic::Ordering::Relaxed)
}

/// Locks `range` on fault (`mlock2(MLOCK_ONFAULT)`): nothing is populated,
/// but the vma is VM_LOCKED, so the process's own MADV_DONTNEED, MADV_REMOVE,
/// MADV_COLD and MADV_PAGEOUT fail with EINVAL, as they do on a vfio-pci
/// VM_PFNMAP mapping. Needs RLIMIT_MEMLOCK room (or CAP_IPC_LOCK).
pub fn lock_on_fault(range: Range<usize>) -> Result<(), i32> {
    const MLOCK_ONFAULT: libc::c_uint = 1;
    // SAFETY: changes vma flags of a mapping barmap created; populates
    // nothing (ONFAULT).
    let rc = unsafe {
        libc::mlock2(
            range.start as *const libc::c_void,
            range.end - range.start,
            MLOCK_ONFAULT,
        )
    };
    zero_or_errno(rc)
}

/// Copies `dst.len()` bytes from the process's memory at `src` into `dst`
/// through the kernel (process_vm_readv on this process), as the kernel's
/// copy_from_user does: an address that is unmapped, revoked or poisoned
/// gives EFAULT instead of a signal. `src` may be a barmap mapping: its
/// faults are served as usual.
pub fn copy_from_user(src: *const u8, dst: &mut [u8]) -> Result<(), i32> {
    probe(src as usize, dst.as_mut_ptr(), dst.len(), false)
}

/// Copies `src` to the process's memory at `dst`; see [`copy_from_user`].
pub fn copy_to_user(src: &[u8], dst: *mut u8) -> Result<(), i32> {
    probe(dst as usize, src.as_ptr() as *mut u8, src.len(), true)
}

/// Unmaps `range`.
pub fn unmap(range: Range<usize>) -> Result<(), i32> {
    // SAFETY: callers pass only ranges of mappings barmap created and owns;
    // no Rust reference points into them.
    let rc = unsafe { libc::munmap(range.start as *mut libc::c_void, range.end - range.start) };
    zero_or_errno(rc)
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

/// A raise of the 2 MiB huge page pool (`nr_hugepages`), put back to its
/// old size on drop. For tests and benchmarks run as root; barmap itself
/// never changes the pool.
#[derive(Debug)]
pub struct HugePageReservation {
    old: Option<u64>,
}

const NR_HUGEPAGES_2M: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";

impl HugePageReservation {
    /// Makes sure at least `needed` 2 MiB huge pages are free
    /// ([`free_huge_pages`]), raising the pool if they are not (root only).
    /// Fails, with the pool put back, if the kernel could not find the
    /// memory.
    pub fn ensure(needed: u64) -> Result<HugePageReservation, String> {
        let free = free_huge_pages().ok_or("the kernel has no 2 MiB huge page pool")?;
        if free >= needed {
            return Ok(HugePageReservation { old: None });
        }
        let read = || -> Result<u64, String> {
            std::fs::read_to_string(NR_HUGEPAGES_2M)
                .map_err(|e| format!("{NR_HUGEPAGES_2M}: {e}"))?
                .trim()
                .parse()
                .map_err(|e| format!("{NR_HUGEPAGES_2M}: {e}"))
        };
        let old = read()?;
        let want = old + (needed - free);
        std::fs::write(NR_HUGEPAGES_2M, want.to_string())
            .map_err(|e| format!("raising {NR_HUGEPAGES_2M} from {old} to {want}: {e}"))?;
        let guard = HugePageReservation { old: Some(old) };
        let now = free_huge_pages().unwrap_or(0);
        if now < needed {
            return Err(format!(
                "raised {NR_HUGEPAGES_2M} from {old} to {want}, but only {now} huge pages are \
                 free (not enough contiguous memory)"
            ));
        }
        Ok(guard)
    }

    /// The pool size before the raise, if it was raised.
    pub fn raised_from(&self) -> Option<u64> {
        self.old
    }
}

impl Drop for HugePageReservation {
    fn drop(&mut self) {
        if let Some(old) = self.old {
            if let Err(e) = std::fs::write(NR_HUGEPAGES_2M, old.to_string()) {
                tracing::warn!("restoring {NR_HUGEPAGES_2M} to {old}: {e}");
            }
        }
    }
}
