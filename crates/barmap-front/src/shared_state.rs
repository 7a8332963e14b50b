//! What a container's or group's opener records in the open file itself,
//! so that another process holding the same open file (inherited across
//! fork or exec, received over a Unix socket: DPDK's secondary process gets
//! its primary's container and group fds so) sees the same state when its
//! front end takes the fd ([`crate::Front`]'s adoption):
//!
//! - a container's memfd holds the IOMMU driver its `SET_IOMMU` chose (8
//!   bytes at offset 0; empty while none);
//! - a group's lock file holds the identity (device, inode) of the
//!   container's open file its `SET_CONTAINER` attached it to (16 bytes;
//!   empty while unattached, and on every fresh open of the group).
//!
//! Only for runs whose devices are served (`barmap run --shared`,
//! `--server`): there every process reaches the device itself, so the
//! container it is attached to needs no more than this to be shared. The
//! file positions are untouched (`pread`/`pwrite` by raw syscall).

use crate::fdtable::FileId;

fn pwrite_raw(fd: i32, bytes: &[u8]) {
    // SAFETY: writes `bytes` at offset 0 of an fd the front end made.
    unsafe { libc::syscall(libc::SYS_pwrite64, fd, bytes.as_ptr(), bytes.len(), 0i64) };
    // SAFETY: trims the file to what was just written.
    unsafe { libc::syscall(libc::SYS_ftruncate, fd, bytes.len() as i64) };
}

fn pread_raw<const N: usize>(fd: i32) -> Option<[u8; N]> {
    let mut b = [0u8; N];
    // SAFETY: reads at most N bytes into `b` at offset 0.
    let n = unsafe { libc::syscall(libc::SYS_pread64, fd, b.as_mut_ptr(), N, 0i64) };
    (n == N as i64).then_some(b)
}

/// Records a container's IOMMU driver (None: none set).
pub fn write_container(fd: i32, iommu: Option<u64>) {
    match iommu {
        Some(t) => pwrite_raw(fd, &t.to_ne_bytes()),
        None => pwrite_raw(fd, &[]),
    }
}

/// The IOMMU driver a container's opener set, if any.
pub fn read_container(fd: i32) -> Option<u64> {
    pread_raw::<8>(fd)
        .map(u64::from_ne_bytes)
        .filter(|&t| t != 0)
}

/// Records the container a group is attached to (None: unattached).
pub fn write_group(fd: i32, container: Option<FileId>) {
    match container {
        Some(id) => {
            let (dev, ino) = id.parts();
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&dev.to_ne_bytes());
            b[8..].copy_from_slice(&ino.to_ne_bytes());
            pwrite_raw(fd, &b);
        }
        None => pwrite_raw(fd, &[]),
    }
}

/// The identity of the container's open file a group is attached to.
pub fn read_group(fd: i32) -> Option<FileId> {
    let b = pread_raw::<16>(fd)?;
    Some(FileId::from_parts(
        u64::from_ne_bytes(b[..8].try_into().unwrap()),
        u64::from_ne_bytes(b[8..].try_into().unwrap()),
    ))
}

/// The whole content of the file `fd` names (an iommufd's record).
pub fn read_all(fd: i32) -> Vec<u8> {
    let Some(st) = crate::fdtable::fstat_raw(fd) else {
        return Vec::new();
    };
    let mut b = vec![0u8; st.st_size.max(0) as usize];
    // SAFETY: reads at most b.len() bytes into `b` at offset 0.
    let n = unsafe { libc::syscall(libc::SYS_pread64, fd, b.as_mut_ptr(), b.len(), 0i64) };
    b.truncate(n.max(0) as usize);
    b
}

/// Replaces the content of the file `fd` names with `bytes`.
pub fn write_all(fd: i32, bytes: &[u8]) {
    pwrite_raw(fd, bytes);
}

/// A write lock on the whole file `fd` names, held by this process
/// (`fcntl` record lock: it excludes other processes, not this one's
/// threads) until dropped. The open file itself is shared by every holder,
/// so `flock`, which belongs to the open file, would exclude none of them.
#[derive(Debug)]
pub struct FileLock(i32);

impl FileLock {
    /// Waits for the lock on `fd`.
    pub fn new(fd: i32) -> FileLock {
        Self::op(fd, libc::F_WRLCK as i16);
        FileLock(fd)
    }

    fn op(fd: i32, kind: i16) {
        // SAFETY: a zeroed flock is a valid argument; whole file from 0.
        let mut l: libc::flock = unsafe { std::mem::zeroed() };
        l.l_type = kind;
        l.l_whence = libc::SEEK_SET as i16;
        loop {
            // SAFETY: F_SETLKW with a valid struct flock.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_fcntl,
                    fd,
                    libc::F_SETLKW,
                    &mut l as *mut libc::flock,
                )
            };
            if rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return;
            }
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        Self::op(self.0, libc::F_UNLCK as i16);
    }
}
