//! Which fds name the front end's open files, by the identity of the open
//! file, never by the number alone.
//!
//! Every fd the front end gives out is a real kernel fd: a memfd named
//! `barmap:vfio-<kind>` for a container, device or iommufd, and for a
//! group an open of the testbed's lock file for that group (its `flock`
//! is the group's single open, across every process that holds a copy).
//! The table maps an fd number to the identity (`st_dev`, `st_ino`) of the
//! file it was given for. A lookup re-checks that identity with `fstat`,
//! so a number closed behind the front end's back (`close_range(2)`,
//! `fclose(fdopen(fd))`, a close inside libc) and reused for another file
//! is that other file, and the stale entry goes.
//!
//! An fd this process holds on another process's open file (inherited
//! across fork or exec, received over a Unix socket) is *foreign*: the
//! emulated device behind it lives in the other process, so every call
//! on it fails with `ENODEV`, as the kernel answers for a device that is
//! gone, and none reports success.
//!
//! The checks here use raw syscalls: they run inside the preload's libc
//! wrappers, and in children that share the parent's memory (vfork), where
//! nothing may go through the wrappers again.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::files::File;

/// Prefix of the name of every memfd the front end gives out as an fd.
pub const PLACEHOLDER_PREFIX: &str = "barmap:vfio-";

/// The kind of VFIO file an fd stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `/dev/vfio/vfio`.
    Container,
    /// `/dev/vfio/N`.
    Group,
    /// A device fd (from a group or `/dev/vfio/devices/vfioN`).
    Device,
    /// `/dev/iommu`.
    Iommufd,
    /// An SR-IOV PF's `sriov_numvfs` (a testbed file, no memfd).
    NumVfs,
}

impl Kind {
    /// The memfd name for this kind (groups are lock files, not memfds).
    pub fn memfd_name(self) -> &'static str {
        match self {
            Kind::Container => "barmap:vfio-container",
            Kind::Group => "barmap:vfio-group",
            Kind::Device => "barmap:vfio-device",
            Kind::Iommufd => "barmap:vfio-iommufd",
            Kind::NumVfs => "barmap:sysfs-sriov-numvfs",
        }
    }

    /// The kind of `file`.
    pub fn of(file: &File) -> Kind {
        match file {
            File::Container(_) => Kind::Container,
            File::Group(_) => Kind::Group,
            File::Device(_) => Kind::Device,
            File::Iommufd(_) => Kind::Iommufd,
            File::NumVfs(_) => Kind::NumVfs,
        }
    }
}

/// The identity of an open file's inode: equal for every fd on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    /// The device and inode numbers.
    pub fn parts(self) -> (u64, u64) {
        (self.dev, self.ino)
    }

    /// The identity of the file with these device and inode numbers.
    pub fn from_parts(dev: u64, ino: u64) -> FileId {
        FileId { dev, ino }
    }
}

/// `fstat(fd)` by raw syscall, or None if `fd` is not open.
pub fn fstat_raw(fd: i32) -> Option<libc::stat> {
    // SAFETY: a zeroed stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes at most one struct stat into `st`.
    let rc = unsafe { libc::syscall(libc::SYS_fstat, fd, &mut st as *mut libc::stat) };
    (rc == 0).then_some(st)
}

/// The identity of the file `fd` names now, if it is open.
pub fn identity(fd: i32) -> Option<FileId> {
    fstat_raw(fd).map(|st| FileId {
        dev: st.st_dev,
        ino: st.st_ino,
    })
}

/// This process's pid, by raw syscall (glibc caches nothing since 2.25,
/// but a vfork child must not trust any cache).
pub fn getpid_raw() -> u32 {
    // SAFETY: getpid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_getpid) as u32 }
}

/// What `/proc/self/fd/<fd>` links to, into `buf`; the link's length.
fn fd_link(fd: i32, buf: &mut [u8; 512]) -> Option<usize> {
    let mut path = [0u8; 40];
    let text = format_fd_path(fd, &mut path)?;
    // SAFETY: `text` is NUL-terminated; readlinkat writes at most buf.len() bytes.
    let n = unsafe {
        libc::syscall(
            libc::SYS_readlinkat,
            libc::AT_FDCWD,
            text.as_ptr(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    (n > 0).then_some(n as usize)
}

/// `/proc/self/fd/<fd>\0` into `out`, without allocating.
fn format_fd_path(fd: i32, out: &mut [u8; 40]) -> Option<&[u8]> {
    if fd < 0 {
        return None;
    }
    let prefix = b"/proc/self/fd/";
    out[..prefix.len()].copy_from_slice(prefix);
    let mut digits = [0u8; 12];
    let (mut n, mut v) = (0, fd as u32);
    loop {
        digits[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let mut at = prefix.len();
    for i in (0..n).rev() {
        out[at] = digits[i];
        at += 1;
    }
    out[at] = 0;
    Some(&out[..=at])
}

/// The kind of front-end file `fd` is, if it is one (this process's or
/// another's): a memfd named [`PLACEHOLDER_PREFIX`]`<kind>`, or a lock
/// file in the lock directory `locks`.
pub fn placeholder_kind(fd: i32, locks: &std::path::Path) -> Option<Kind> {
    let st = fstat_raw(fd)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return None;
    }
    let mut buf = [0u8; 512];
    let n = fd_link(fd, &mut buf)?;
    let link = &buf[..n];
    let memfd = b"/memfd:";
    if let Some(name) = link.strip_prefix(memfd) {
        let name = name.strip_suffix(b" (deleted)").unwrap_or(name);
        return [Kind::Container, Kind::Device, Kind::Iommufd]
            .into_iter()
            .find(|k| k.memfd_name().as_bytes() == name);
    }
    let locks = locks.as_os_str().as_encoded_bytes();
    if !(link.len() > locks.len() && link.starts_with(locks) && link[locks.len()] == b'/') {
        return None;
    }
    // A served device's fd holds `locks/device-<i>`; a group's
    // `locks/group-<n>`.
    Some(if link[locks.len() + 1..].starts_with(b"device-") {
        Kind::Device
    } else {
        Kind::Group
    })
}

/// The name of the lock file in `locks` that `fd` is an open of, if it is
/// one.
pub fn lock_name(fd: i32, locks: &std::path::Path) -> Option<String> {
    let mut buf = [0u8; 512];
    let n = fd_link(fd, &mut buf)?;
    let link = &buf[..n];
    let locks = locks.as_os_str().as_encoded_bytes();
    let name = link.strip_prefix(locks)?.strip_prefix(b"/")?;
    String::from_utf8(name.to_vec()).ok()
}

/// How a front end takes an fd of another process's front-end file: its
/// own file for it, if it can reach the same object; None leaves it
/// foreign.
pub type Resolve<'a> = &'a dyn Fn(i32, Kind) -> Option<File>;

/// What an fd number stands for.
#[derive(Debug, Clone)]
pub enum Slot {
    /// One of this process's open files.
    Own(File),
    /// Another process's open file of this kind.
    Foreign(Kind),
}

#[derive(Debug)]
struct Entry {
    id: FileId,
    slot: Slot,
}

/// The fd numbers that name front-end files, with their identities.
#[derive(Debug, Default)]
pub struct FdTable {
    map: RwLock<HashMap<i32, Entry>>,
}

impl FdTable {
    /// Records that `fd`, whose file is `id`, stands for `slot`.
    pub fn insert(&self, fd: i32, id: FileId, slot: Slot) {
        let old = self.map.write().unwrap().insert(fd, Entry { id, slot });
        drop(old); // outside the lock: dropping may release a device
    }

    /// Whether the number `fd` has an entry (not checked: a cheap first
    /// test before any syscall).
    pub fn has_number(&self, fd: i32) -> bool {
        self.map.read().unwrap().contains_key(&fd)
    }

    /// What `fd` stands for, if it still names the file it was given for.
    /// A stale entry is dropped when `prune` is set.
    pub fn get(&self, fd: i32, prune: bool) -> Option<Slot> {
        let (id, slot) = {
            let map = self.map.read().unwrap();
            let e = map.get(&fd)?;
            (e.id, e.slot.clone())
        };
        if identity(fd) == Some(id) {
            return Some(slot);
        }
        if prune {
            let mut map = self.map.write().unwrap();
            let gone = match map.get(&fd) {
                Some(e) if e.id == id => map.remove(&fd),
                _ => None,
            };
            drop(map);
            drop(gone);
        }
        None
    }

    /// Forgets `fd` (closed); what it stood for.
    pub fn remove(&self, fd: i32) -> Option<Slot> {
        let e = self.map.write().unwrap().remove(&fd);
        e.map(|e| e.slot)
    }

    /// Forgets every fd in `first..=last` (closed by `close_range`).
    pub fn remove_range(&self, first: u32, last: u32) {
        let gone: Vec<Entry> = {
            let mut map = self.map.write().unwrap();
            let fds: Vec<i32> = map
                .keys()
                .copied()
                .filter(|&fd| fd >= 0 && (first..=last).contains(&(fd as u32)))
                .collect();
            fds.iter().filter_map(|fd| map.remove(fd)).collect()
        };
        drop(gone);
    }

    /// `new` is now a duplicate of `old` (done in the kernel): it stands
    /// for what `old` does, and for nothing else.
    pub fn dup(&self, old: i32, new: i32) {
        let replaced = {
            let mut map = self.map.write().unwrap();
            match map.get(&old) {
                Some(e) if identity(old) == Some(e.id) => {
                    let e = Entry {
                        id: e.id,
                        slot: e.slot.clone(),
                    };
                    map.insert(new, e)
                }
                _ => map.remove(&new),
            }
        };
        drop(replaced);
    }

    /// Drops every entry whose number names another file now.
    pub fn sweep(&self) {
        let gone: Vec<Entry> = {
            let mut map = self.map.write().unwrap();
            let stale: Vec<i32> = map
                .iter()
                .filter(|(fd, e)| identity(**fd) != Some(e.id))
                .map(|(fd, _)| *fd)
                .collect();
            stale.iter().filter_map(|fd| map.remove(fd)).collect()
        };
        drop(gone);
    }

    /// Every entry, as (fd, slot), in fd order (for digests).
    pub fn snapshot(&self) -> Vec<(i32, Slot)> {
        let mut v: Vec<(i32, Slot)> = self
            .map
            .read()
            .unwrap()
            .iter()
            .map(|(fd, e)| (*fd, e.slot.clone()))
            .collect();
        v.sort_by_key(|(fd, _)| *fd);
        v
    }

    /// Records every fd of this process that is a front-end file of some
    /// other process (inherited across fork or exec): as `resolve` takes
    /// it, or foreign.
    /// `locks` is the run's lock directory.
    pub fn adopt_inherited(&self, locks: &std::path::Path, resolve: Resolve<'_>) {
        let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
            return;
        };
        let fds: Vec<i32> = dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        for fd in fds {
            self.adopt(fd, locks, resolve);
        }
    }

    /// Records `fd` if it is a front-end file this table does not know
    /// (received over a socket, or inherited): as `resolve` takes it, or
    /// foreign.
    pub fn adopt(&self, fd: i32, locks: &std::path::Path, resolve: Resolve<'_>) {
        if self.get(fd, true).is_some() {
            return;
        }
        if let (Some(kind), Some(id)) = (placeholder_kind(fd, locks), identity(fd)) {
            let slot = match resolve(fd, kind) {
                Some(file) => Slot::Own(file),
                None => Slot::Foreign(kind),
            };
            self.insert(fd, id, slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_path_is_formatted_without_allocating() {
        let mut out = [0u8; 40];
        assert_eq!(
            format_fd_path(1234, &mut out).unwrap(),
            b"/proc/self/fd/1234\0"
        );
        assert_eq!(format_fd_path(0, &mut out).unwrap(), b"/proc/self/fd/0\0");
        assert!(format_fd_path(-1, &mut out).is_none());
    }

    #[test]
    fn a_reused_number_is_not_taken_for_the_old_file() {
        let t = FdTable::default();
        let c = std::ffi::CString::new(Kind::Device.memfd_name()).unwrap();
        // SAFETY: memfd_create with a valid name.
        let fd = unsafe { libc::memfd_create(c.as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        t.insert(fd, identity(fd).unwrap(), Slot::Foreign(Kind::Device));
        assert!(t.get(fd, true).is_some());
        assert_eq!(
            placeholder_kind(fd, std::path::Path::new("/nonexistent")),
            Some(Kind::Device)
        );
        // SAFETY: closes our own fd, then opens another file at (likely) its number.
        unsafe { libc::close(fd) };
        // SAFETY: memfd_create with a valid name.
        let other = unsafe { libc::memfd_create(c"other".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(other >= 0);
        if other == fd {
            assert!(t.get(fd, true).is_none(), "stale entry served");
            assert!(!t.has_number(fd), "stale entry kept");
        }
        // SAFETY: our own fd.
        unsafe { libc::close(other) };
    }
}
