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
