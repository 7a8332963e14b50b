//! A memory BAR served to other processes: a memfd of the BAR's size that
//! clients mmap, revoked by truncation.
//!
//! [`MemBar::revoke`] saves the contents into a second memfd and truncates
//! the BAR's memfd to 0: from then on, every mapping of it, in every
//! process, registered with a userfaultfd or not, gets SIGBUS on touch
//! (shmem has no page past the end of the file). The kernel does this for
//! us; no cooperation of the client is needed, and a stopped client
//! delays nothing. [`MemBar::restore`] copies the contents back, growing
//! the file as it goes, then to its size: old mappings see the device
//! memory again (their pages fault in from the file), as a vfio-pci
//! mapping does after re-enable.
//!
//! No write a client completed is lost on either side. Revocation takes a
//! reference to every page (spliced into pipes, after faulting in the
//! holes) before it truncates, so a write that lands before the truncation
//! is in the saved contents; restoration never copies over a page a client
//! can already reach.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A memfd-backed BAR and its revocation state.
#[derive(Debug)]
pub struct MemBar {
    fd: OwnedFd,
    /// What clients get: the memfd itself, or for a read-only BAR an
    /// `O_RDONLY` reopen of it (no writable shared mapping, no `pwrite`,
    /// no `ftruncate` through it).
    client_fd: OwnedFd,
    size: u64,
    /// Clients may write it (their writes must survive a revocation).
    writable: bool,
    /// The contents while revoked (a memfd, so that saving costs no copy
    /// through user space and holes stay holes); `None` while live.
    saved: Mutex<Option<OwnedFd>>,
}

/// What one revocation or restoration cost.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Cost {
    /// Bytes of data copied (holes are skipped).
    pub bytes: u64,
    /// Wall time.
    pub time: Duration,
}

/// `memfd_create(name, MFD_CLOEXEC)` sized to `size` bytes.
pub fn memfd(name: &str, size: u64) -> io::Result<OwnedFd> {
    let cname = std::ffi::CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: cname is a valid C string; the returned fd is new and ours.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    truncate(fd.as_raw_fd(), size)?;
    Ok(fd)
}

/// An `O_RDONLY` open of the file behind `fd` (through /proc/self/fd).
fn reopen_read_only(fd: &OwnedFd) -> io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let f = std::fs::OpenOptions::new().read(true).open(path)?;
    Ok(OwnedFd::from(f))
}

fn truncate(fd: RawFd, size: u64) -> io::Result<()> {
    // SAFETY: ftruncate on an fd we own.
    if unsafe { libc::ftruncate(fd, size as libc::off_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Copies the data ranges of `from` (skipping holes with SEEK_DATA and
/// SEEK_HOLE) of the first `size` bytes into `to` at the same offsets;
/// returns the bytes copied.
fn copy_data(from: RawFd, to: RawFd, size: u64) -> io::Result<u64> {
    let mut at: i64 = 0;
    let mut copied = 0u64;
    while (at as u64) < size {
        // SAFETY: lseek on fds we own.
        let data = unsafe { libc::lseek(from, at, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // no data after `at`
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(from, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        let end = (hole as u64).min(size) as i64;
        let (mut off_in, mut off_out) = (data, data);
        while off_in < end {
            // SAFETY: offsets are locals the kernel updates; fds are ours.
            let n = unsafe {
                libc::copy_file_range(
                    from,
                    &mut off_in,
                    to,
                    &mut off_out,
                    (end - off_in) as usize,
                    0,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if n == 0 {
                break;
            }
            copied += n as u64;
        }
        at = end;
    }
    Ok(copied)
}

/// Faults in every page of the first `size` bytes of `fd` for writing
/// (holes become zero pages; data stays as it is).
fn populate(fd: RawFd, size: u64) -> io::Result<()> {
    // SAFETY: a fresh shared mapping of our memfd, unmapped below; nothing
    // else sees it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: p maps size bytes; MADV_POPULATE_WRITE changes no contents.
    let rc = unsafe { libc::madvise(p, size as usize, libc::MADV_POPULATE_WRITE) };
    let e = io::Error::last_os_error();
    // SAFETY: our own mapping from above.
    unsafe { libc::munmap(p, size as usize) };
    if rc != 0 {
        return Err(e);
    }
    Ok(())
}

/// A pipe that holds `want` bytes if the system allows it (else as much
/// as it allows): its two ends and its capacity.
fn pipe_of(want: u64) -> io::Result<(OwnedFd, OwnedFd, u64)> {
    let mut p = [0i32; 2];
    // SAFETY: pipe2 fills the array with two new fds, owned below.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds are new and ours.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    let mut cap = 0;
    for size in [want.min(1 << 30), 1 << 20] {
        // SAFETY: fcntl on our pipe.
        let n = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
        if n > 0 {
            cap = n as u64;
            break;
        }
    }
    if cap == 0 {
        // SAFETY: as above.
        cap = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_GETPIPE_SZ) }.max(4096) as u64;
    }
    Ok((r, w, cap))
}

/// Revokes a BAR that clients may write, losing no write that completed:
/// every page is faulted in, then a reference to each is spliced into
/// pipes (no copy), then the memfd is truncated. A client's write that
/// completes before the truncation lands in a page the pipes hold; after
/// it, the client gets SIGBUS. The pipes are then drained into `keep`.
/// (Copying first and truncating after would lose the writes made in
/// between; a hole would lose a write that faults in a fresh page.)
fn capture(fd: RawFd, keep: RawFd, size: u64) -> io::Result<u64> {
    populate(fd, size)?;
    let mut pipes = Vec::new();
    let mut at: i64 = 0;
    while (at as u64) < size {
        let (r, w, cap) = pipe_of(size - at as u64)?;
        let end = (at as u64 + cap).min(size) as i64;
        while at < end {
            // SAFETY: splice between fds we own; `at` is a local offset.
            let n = unsafe {
                libc::splice(
                    fd,
                    &mut at,
                    w.as_raw_fd(),
                    std::ptr::null_mut(),
                    (end - at) as usize,
                    libc::SPLICE_F_NONBLOCK,
                )
            };
            if n <= 0 {
                return Err(if n == 0 {
                    io::ErrorKind::UnexpectedEof.into()
                } else {
                    io::Error::last_os_error()
                });
            }
        }
        pipes.push((r, end));
    }
    truncate(fd, 0)?;
    let mut out: i64 = 0;
    for (r, end) in pipes {
        while out < end {
            // SAFETY: as above.
            let n = unsafe {
                libc::splice(
                    r.as_raw_fd(),
                    std::ptr::null_mut(),
                    keep,
                    &mut out,
                    (end - out) as usize,
                    0,
                )
            };
            if n <= 0 {
                return Err(if n == 0 {
                    io::ErrorKind::UnexpectedEof.into()
                } else {
                    io::Error::last_os_error()
                });
            }
        }
    }
    Ok(size)
}

impl MemBar {
    /// A BAR of `size` bytes (all zero) whose first bytes are `init`;
    /// `writable` says whether clients may write it.
    pub fn new(name: &str, size: u64, init: &[u8], writable: bool) -> io::Result<MemBar> {
        let fd = memfd(name, size)?;
        let client_fd = if writable {
            fd.try_clone()?
        } else {
            reopen_read_only(&fd)?
        };
        let bar = MemBar {
            fd,
            client_fd,
            size,
            writable,
            saved: Mutex::new(None),
        };
        bar.write_init(init)?;
        Ok(bar)
    }

    /// Writes `init` at offset 0 (a reset's register contents).
    pub fn write_init(&self, init: &[u8]) -> io::Result<()> {
        if init.is_empty() {
            return Ok(());
        }
        let saved = self.saved.lock().unwrap();
        let fd = saved.as_ref().unwrap_or(&self.fd);
        pwrite_all(fd.as_raw_fd(), init, 0)
    }

    /// The fd clients map: the memfd, or a read-only reopen of it.
    pub fn client_fd(&self) -> &OwnedFd {
        &self.client_fd
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the BAR is revoked (its memfd truncated).
    pub fn is_revoked(&self) -> bool {
        self.saved.lock().unwrap().is_some()
    }

    /// Saves the contents and truncates the memfd to 0: every mapping in
    /// every process SIGBUSes on touch from when this returns. Nothing to
    /// do if already revoked.
    pub fn revoke(&self) -> io::Result<Cost> {
        let start = Instant::now();
        let mut saved = self.saved.lock().unwrap();
        if saved.is_some() {
            return Ok(Cost::default());
        }
        let keep = memfd("barmap-bar-saved", self.size)?;
        let bytes = if self.writable {
            capture(self.fd.as_raw_fd(), keep.as_raw_fd(), self.size)?
        } else {
            let bytes = copy_data(self.fd.as_raw_fd(), keep.as_raw_fd(), self.size)?;
            truncate(self.fd.as_raw_fd(), 0)?;
            bytes
        };
        *saved = Some(keep);
        Ok(Cost {
            bytes,
            time: start.elapsed(),
        })
    }

    /// Grows the memfd back and copies the saved contents in: mappings
    /// reach the BAR again. Nothing to do if not revoked.
    pub fn restore(&self) -> io::Result<Cost> {
        let start = Instant::now();
        let mut saved = self.saved.lock().unwrap();
        let Some(keep) = saved.as_ref() else {
            return Ok(Cost::default());
        };
        // The copy grows the file as it goes, in ascending offsets: a page
        // a client can reach again already holds its contents, and a write
        // a client makes to it is never copied over. (Growing first and
        // copying after would overwrite the writes made in between.)
        let bytes = copy_data(keep.as_raw_fd(), self.fd.as_raw_fd(), self.size)?;
        truncate(self.fd.as_raw_fd(), self.size)?;
        *saved = None;
        Ok(Cost {
            bytes,
            time: start.elapsed(),
        })
    }

    /// Reads at `offset` (bounds checked by the caller); the live file
    /// or, while revoked, the saved copy (the device's own view: the
    /// server reads it for the control socket, never for a client).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let saved = self.saved.lock().unwrap();
        let fd = saved.as_ref().unwrap_or(&self.fd);
        pread_all(fd.as_raw_fd(), buf, offset)
    }

    /// Writes at `offset` (bounds checked by the caller).
    pub fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let saved = self.saved.lock().unwrap();
        let fd = saved.as_ref().unwrap_or(&self.fd);
        pwrite_all(fd.as_raw_fd(), data, offset)
    }
}

/// `pread` until `buf` is full; past the end of the file is EIO.
pub fn pread_all(fd: RawFd, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: buf is valid writable memory of buf.len() bytes.
        let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), offset as i64) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        buf = &mut buf[n as usize..];
        offset += n as u64;
    }
    Ok(())
}

/// `pwrite` until all of `data` is written.
pub fn pwrite_all(fd: RawFd, mut data: &[u8], mut offset: u64) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: data is valid readable memory of data.len() bytes.
        let n = unsafe { libc::pwrite(fd, data.as_ptr().cast(), data.len(), offset as i64) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        data = &data[n as usize..];
        offset += n as u64;
    }
    Ok(())
}
