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
//!
//! ## A client that tampers with the memfd
//!
//! A writable shared mapping needs a file opened for writing, and any
//! such file allows `ftruncate`, `fallocate` and `pwrite`; a memfd's seals
//! cannot be lifted once set, and `F_SEAL_GROW`/`F_SEAL_SHRINK` would stop
//! the server's own revocation and restoration too (the memfd is created
//! without `MFD_ALLOW_SEALING`, so a client cannot seal it either). So a
//! client can grow the file while it is revoked (every process's mapping
//! then reaches fresh zero pages instead of SIGBUS), shrink it while it
//! is live, punch holes or write it. What the server does about it:
//!
//! - Clients get an open of the memfd through `/proc/self/fd` (`O_RDWR`,
//!   or `O_RDONLY` for a read-only BAR), never the memfd's own file: the
//!   kernel reports no inotify event for `pwrite` or `fallocate` through
//!   `memfd_create`'s pseudo file, and does through a reopen.
//! - The process's one watcher ([`crate::watch`]: one inotify instance
//!   and one thread for all BARs, a watch per BAR) waits on `IN_MODIFY`
//!   (which
//!   `ftruncate`, `fallocate`, `pwrite` and `truncate` on the path raise)
//!   and, every second regardless, checks the file's size under the same
//!   lock as revocation and restoration: while revoked, a size other than
//!   0 is truncated to 0 again (every mapping SIGBUSes again); while live,
//!   a size other than the BAR's is set back (what a shrink took reads as
//!   zero, as if the client had written zeros). Each is a tamper event,
//!   counted ([`MemBar::tampers`]) and logged.
//! - [`MemBar::restore`] truncates the file to 0 before it copies the
//!   contents back, so nothing a tamperer left in it survives into the
//!   restored BAR; revocation sets the size back before it saves, and
//!   ends revoked even when a tamperer makes the save fail.
//!
//! What stays open is a window, from the tamperer's call to the watcher's
//! answer, in which mappings reach what the tamperer made (zero pages it
//! grew, bytes it wrote), never the device's saved contents; BENCHMARKS.md
//! measures it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::watch::{Check, Watch};
use std::time::{Duration, Instant};

/// A memfd-backed BAR and its revocation state.
#[derive(Debug)]
pub struct MemBar {
    state: Arc<State>,
    /// Its registration with the process's watcher ([`crate::watch`]),
    /// which undoes a client's changes of the file's size; removed when
    /// the BAR is dropped.
    watch: Option<Watch>,
}

/// What the BAR and its watcher share.
#[derive(Debug)]
struct State {
    fd: OwnedFd,
    /// What clients get: a reopen of the memfd through /proc (`O_RDWR`,
    /// or `O_RDONLY` for a read-only BAR: no writable shared mapping, no
    /// `pwrite`, no `ftruncate` through it), never its pseudo file.
    client_fd: OwnedFd,
    size: u64,
    /// Clients may write it (their writes must survive a revocation).
    writable: bool,
    /// The contents while revoked (a memfd, so that saving costs no copy
    /// through user space and holes stay holes); `None` while live.
    saved: Mutex<Option<OwnedFd>>,
    /// Tamper events undone so far.
    tampers: AtomicU64,
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

/// An open of the file behind `fd` through /proc/self/fd, for reading
/// and, if `write`, writing: a file of its own (the kernel reports
/// inotify events for it, unlike for memfd_create's pseudo file).
fn reopen(fd: &OwnedFd, write: bool) -> io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)?;
    Ok(OwnedFd::from(f))
}

/// The size of the file behind `fd`.
fn file_size(fd: RawFd) -> io::Result<u64> {
    // SAFETY: stat is plain data, filled by fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on an fd we own into a local.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.st_size as u64)
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

impl State {
    /// Sets the file's size back to what the BAR's state says (0 while
    /// revoked, the BAR's size while live) if a client changed it; the
    /// caller holds `saved`. Returns whether it had to.
    fn undo_size(&self, revoked: bool) -> io::Result<bool> {
        let want = if revoked { 0 } else { self.size };
        let have = file_size(self.fd.as_raw_fd())?;
        if have == want {
            return Ok(false);
        }
        truncate(self.fd.as_raw_fd(), want)?;
        self.tampers.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            "memory BAR memfd: a client set its size to {have} while {}; set back to {want}",
            if revoked { "revoked" } else { "live" }
        );
        Ok(true)
    }
}

impl Check for State {
    /// Checks the size under the lock revocation and restoration hold.
    fn check(&self) {
        let saved = self.saved.lock().unwrap();
        if let Err(e) = self.undo_size(saved.is_some()) {
            tracing::error!("memory BAR memfd: setting its size back: {e}");
        }
    }
}

impl MemBar {
    /// A BAR of `size` bytes (all zero) whose first bytes are `init`;
    /// `writable` says whether clients may write it. Registers it with the
    /// process's watcher.
    pub fn new(name: &str, size: u64, init: &[u8], writable: bool) -> io::Result<MemBar> {
        Self::build(name, size, init, writable, true)
    }

    /// [`MemBar::new`]; not watched unless `watch` (for tests of what
    /// revocation and restoration do by themselves).
    fn build(
        name: &str,
        size: u64,
        init: &[u8],
        writable: bool,
        watch: bool,
    ) -> io::Result<MemBar> {
        let fd = memfd(name, size)?;
        let client_fd = reopen(&fd, writable)?;
        let state = Arc::new(State {
            fd,
            client_fd,
            size,
            writable,
            saved: Mutex::new(None),
            tampers: AtomicU64::new(0),
        });
        let watch = watch.then(|| {
            let target: Arc<dyn Check> = state.clone();
            Watch::new(&state.fd, Arc::downgrade(&target))
        });
        let bar = MemBar { state, watch };
        bar.write_init(init)?;
        Ok(bar)
    }

    /// Writes `init` at offset 0 (a reset's register contents).
    pub fn write_init(&self, init: &[u8]) -> io::Result<()> {
        if init.is_empty() {
            return Ok(());
        }
        let saved = self.state.saved.lock().unwrap();
        let fd = saved.as_ref().unwrap_or(&self.state.fd);
        pwrite_all(fd.as_raw_fd(), init, 0)
    }

    /// The fd clients map: a reopen of the memfd, read-write or read-only.
    pub fn client_fd(&self) -> &OwnedFd {
        &self.state.client_fd
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.state.size
    }

    /// Whether the BAR is revoked (its memfd truncated).
    pub fn is_revoked(&self) -> bool {
        self.state.saved.lock().unwrap().is_some()
    }

    /// Tamper events so far: times a client had changed the memfd's size
    /// and the server set it back.
    pub fn tampers(&self) -> u64 {
        self.state.tampers.load(Ordering::Relaxed)
    }

    /// The memfd's size now, read under the lock the watcher sets it back
    /// under (so a tamper event it counted is in [`MemBar::tampers`]).
    pub fn file_len(&self) -> io::Result<u64> {
        let _saved = self.state.saved.lock().unwrap();
        file_size(self.state.fd.as_raw_fd())
    }

    /// Whether the kernel reports changes of its file to the watcher
    /// (else the watcher checks it every [`crate::watch::BACKSTOP`] only).
    pub fn watched_by_event(&self) -> bool {
        self.watch.as_ref().is_some_and(Watch::by_event)
    }

    /// Saves the contents and truncates the memfd to 0: every mapping in
    /// every process SIGBUSes on touch from when this returns. Nothing to
    /// do if already revoked. A client that changes the file's size while
    /// it saves can make the save fail: it is tried again (the size set
    /// back first), and after the last failure the memfd is truncated all
    /// the same (revoked, with what was saved) and the error returned.
    pub fn revoke(&self) -> io::Result<Cost> {
        let st = &*self.state;
        let start = Instant::now();
        let mut saved = st.saved.lock().unwrap();
        if saved.is_some() {
            return Ok(Cost::default());
        }
        let keep = memfd("barmap-bar-saved", st.size)?;
        let mut result = Err(io::ErrorKind::Other.into());
        for _ in 0..3 {
            if let Err(e) = st.undo_size(false) {
                result = Err(e);
                continue;
            }
            result = if st.writable {
                capture(st.fd.as_raw_fd(), keep.as_raw_fd(), st.size)
            } else {
                copy_data(st.fd.as_raw_fd(), keep.as_raw_fd(), st.size)
            };
            if result.is_ok() {
                break;
            }
        }
        let truncated = truncate(st.fd.as_raw_fd(), 0);
        *saved = Some(keep);
        let bytes = result?;
        truncated?;
        Ok(Cost {
            bytes,
            time: start.elapsed(),
        })
    }

    /// Grows the memfd back and copies the saved contents in: mappings
    /// reach the BAR again. Nothing to do if not revoked.
    pub fn restore(&self) -> io::Result<Cost> {
        let st = &*self.state;
        let start = Instant::now();
        let mut saved = st.saved.lock().unwrap();
        let Some(keep) = saved.as_ref() else {
            return Ok(Cost::default());
        };
        // While revoked no client can write the BAR (every touch is SIGBUS,
        // every write by message goes to the saved copy): whatever the file
        // holds was put there by a client that tampered with it. Emptied
        // first, so that none of it stays in the holes the copy skips.
        truncate(st.fd.as_raw_fd(), 0)?;
        // The copy grows the file as it goes, in ascending offsets: a page
        // a client can reach again already holds its contents, and a write
        // a client makes to it is never copied over. (Growing first and
        // copying after would overwrite the writes made in between.)
        let bytes = copy_data(keep.as_raw_fd(), st.fd.as_raw_fd(), st.size)?;
        truncate(st.fd.as_raw_fd(), st.size)?;
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
        let saved = self.state.saved.lock().unwrap();
        let fd = saved.as_ref().unwrap_or(&self.state.fd);
        pread_all(fd.as_raw_fd(), buf, offset)
    }

    /// Writes at `offset` (bounds checked by the caller).
    pub fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let saved = self.state.saved.lock().unwrap();
        let fd = saved.as_ref().unwrap_or(&self.state.fd);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restoration_drops_what_a_tamperer_left_in_the_revoked_file() {
        // No watcher: what restoration does by itself, whatever the race.
        // A read-only BAR, whose saved contents keep their holes (a
        // writable one's are populated whole); its O_RDONLY fd reopens
        // read-write through /proc, as a hostile client would.
        let bar = MemBar::build("t-restore", 1 << 20, b"dev", false, false).unwrap();
        bar.write(8192, b"kept").unwrap();
        bar.revoke().unwrap();
        let rw = reopen(bar.client_fd(), true).unwrap();
        let c = rw.as_raw_fd();
        truncate(c, 1 << 20).unwrap();
        pwrite_all(c, b"evil", 4 * 4096).unwrap();
        pwrite_all(c, b"evil", 8192).unwrap();
        bar.restore().unwrap();
        let mut b = [0u8; 4];
        bar.read(0, &mut b[..3]).unwrap();
        assert_eq!(&b[..3], b"dev");
        bar.read(8192, &mut b).unwrap();
        assert_eq!(&b, b"kept", "the device's word, not the tamperer's");
        bar.read(4 * 4096, &mut b).unwrap();
        assert_eq!(b, [0; 4], "a hole of the saved contents stays zero");
        assert_eq!(file_size(bar.state.fd.as_raw_fd()).unwrap(), 1 << 20);
    }

    #[test]
    fn revocation_ends_revoked_when_a_tamperer_shrank_the_live_file() {
        let bar = MemBar::build("t-shrunk", 1 << 20, b"", true, false).unwrap();
        bar.write(4096, b"word").unwrap();
        truncate(bar.client_fd().as_raw_fd(), 4096).unwrap();
        bar.revoke().unwrap();
        assert!(bar.is_revoked());
        assert_eq!(bar.tampers(), 1, "the shrink is a tamper event");
        assert_eq!(file_size(bar.state.fd.as_raw_fd()).unwrap(), 0);
        let mut b = [0u8; 4];
        bar.read(4096, &mut b).unwrap();
        assert_eq!(b, [0; 4], "what the shrink took reads as zero");
    }

    #[test]
    fn the_watcher_sets_the_size_back_after_a_grow_while_revoked() {
        let bar = MemBar::new("t-grow", 1 << 16, b"", true).unwrap();
        assert!(bar.watched_by_event());
        bar.revoke().unwrap();
        truncate(bar.client_fd().as_raw_fd(), 1 << 16).unwrap();
        let t = Instant::now();
        while file_size(bar.state.fd.as_raw_fd()).unwrap() != 0 {
            assert!(t.elapsed() < Duration::from_secs(10), "never truncated");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(bar.tampers(), 1);
    }
}
