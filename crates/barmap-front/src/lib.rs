//! # barmap-front
//!
//! The VFIO front end: barmap's emulated devices presented through the VFIO
//! uAPI, inside the program that uses them. `barmap run` lays out a
//! testbed (the sysfs view, [`testbed`]) and starts the program with the
//! `barmap-preload` library, whose libc wrappers hand every call on the
//! VFIO paths and fds to the [`Front`] of the process:
//!
//! - `open` of `/dev/vfio/vfio`, `/dev/vfio/N`, `/dev/vfio/devices/vfioN`
//!   or `/dev/iommu` returns a real fd (a memfd placeholder) that the front
//!   end knows as a container, group, device or iommufd ([`files`]);
//!   sysfs paths are redirected into the testbed ([`paths`]);
//! - `ioctl` on those fds is served with the kernel's checks and errnos
//!   (type1: [`type1`], iommufd: [`iommufd`], device: [`device`]);
//! - `mmap` of a device fd at `index << 40 | offset` is a barmap mapping:
//!   lazily faulted, zapped on COMMAND.MEM clear or reset, SIGBUS while
//!   disabled; `pread`/`pwrite` reach config space and the BARs;
//! - DMA maps are recorded in IOMMU tables ([`dma`]) with their
//!   permissions, for device models to DMA through.
//!
//! The devices live in the program's own process: no server, no socket;
//! or, for `--device vfio-user:PATH`, in a vfio-user server that the front
//! end reaches as a client ([`remote`], over [`barmap_client`]).

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]
#![warn(missing_docs)]

pub mod device;
pub mod dma;
pub mod fdtable;
pub mod files;
pub mod iommufd;
pub mod irq;
pub mod kselftest;
pub mod launch;
pub mod nodes;
pub mod paths;
pub mod remote;
pub mod shared_state;
pub mod spec;
pub mod sriov;
pub mod testbed;
pub mod type1;
pub mod user;

use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicPtr, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::device::EmuDevice;
use crate::fdtable::{FdTable, Kind, Slot};
use crate::files::{Container, DeviceFile, File, Group, GROUP_OPEN};
use crate::iommufd::Iommufd;
use crate::paths::{Node, Route};
use crate::spec::{RunSpec, TESTBED_ENV};

/// An errno, as the kernel returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

#[allow(missing_docs)]
impl Errno {
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const EFAULT: Errno = Errno(libc::EFAULT);
    pub const EBUSY: Errno = Errno(libc::EBUSY);
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    pub const ENODEV: Errno = Errno(libc::ENODEV);
    pub const ESPIPE: Errno = Errno(libc::ESPIPE);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const ENOSPC: Errno = Errno(libc::ENOSPC);
    pub const ENOTTY: Errno = Errno(libc::ENOTTY);
    pub const EACCES: Errno = Errno(libc::EACCES);
    pub const EMSGSIZE: Errno = Errno(libc::EMSGSIZE);
    pub const EOPNOTSUPP: Errno = Errno(libc::EOPNOTSUPP);
    pub const EOVERFLOW: Errno = Errno(libc::EOVERFLOW);
}

/// A BAR mapping made through a device fd.
#[derive(Debug)]
struct BarMap {
    start: usize,
    len: usize,
    mapping: barmap_models::ModelMapping,
    /// Keeps the device alive while the mapping is (as the vma's file
    /// reference does).
    _dev: Arc<EmuDevice>,
    /// What a forked child needs to map it again as its own: a trapped
    /// register mapping of a served device (its copy is left to the
    /// child, as the kernel's vma is).
    inherit: Option<Inherited>,
}

/// A trapped register mapping of a served device, as a forked child
/// finds it: the child's first access there maps the range again through
/// the child's own connection ([`Front::adopt_inherited_mapping`]).
#[derive(Debug, Clone, Copy)]
struct Inherited {
    start: usize,
    len: usize,
    /// The device's position in the run.
    device: usize,
    /// BAR index, and the offset in it of `start`.
    index: u32,
    at: u64,
    prot: i32,
}

/// Address ranges of BAR mappings made through device fds, in this
/// process (for iommufd, which cannot DMA-map them).
static BAR_RANGES: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());

/// The BAR mappings among [`BAR_RANGES`] that map a device server's file
/// (forgotten when wholly unmapped).
static FILE_RANGES: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());

/// Whether `addr..addr+len` meets a BAR mapping.
pub fn is_bar_memory(addr: u64, len: u64) -> bool {
    let (a, e) = (addr as usize, addr.saturating_add(len) as usize);
    BAR_RANGES
        .lock()
        .unwrap()
        .iter()
        .any(|&(s, l)| s < e && a < s + l)
}

/// The front end of one process.
#[derive(Debug)]
pub struct Front {
    testbed: PathBuf,
    /// The directory of the group and device lock files.
    locks: PathBuf,
    spec: RunSpec,
    pid: u32,
    devices: Mutex<Vec<Option<Arc<EmuDevice>>>>,
    files: FdTable,
    maps: Mutex<Vec<BarMap>>,
    /// Register mappings an ancestor made that this process (a forked
    /// child) kept and has not touched yet.
    inherited: Mutex<Vec<Inherited>>,
}

static FRONT: AtomicPtr<Front> = AtomicPtr::new(std::ptr::null_mut());
/// Set once the process is known not to run under `barmap run` (no
/// testbed), so that libc calls stop asking.
static ABSENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Front {
    /// The front end of this process, if the program runs under
    /// `barmap run` (`BARMAP_TESTBED` names a testbed). A forked child gets
    /// a front end of its own (the parent's objects are the parent's); a
    /// task that shares the address space of the process whose front end
    /// this is (a vfork child, a `clone(CLONE_VM)` child) gets none: see
    /// [`Front::task`].
    pub fn get() -> Option<&'static Front> {
        match Front::task()? {
            Task::Own(f) => Some(f),
            Task::Borrowed(_) => None,
        }
    }

    /// The front end as the calling task sees it.
    ///
    /// The front end lives in the memory of the process that made it. A
    /// child made by `fork()` has a copy of that memory (glibc's fork runs
    /// the `pthread_atfork` child handler, which marks it): it makes a
    /// front end of its own, and the fds it inherited are foreign there.
    /// A child that shares the memory (vfork, `clone(CLONE_VM)`, or any
    /// child that did not run the fork handlers) must leave the parent's
    /// front end exactly as it was: it gets [`Task::Borrowed`], on which
    /// the preload only reads (calls on VFIO fds fail with `ENODEV`, fd
    /// operations go to the kernel alone).
    pub fn task() -> Option<Task> {
        let current = FRONT.load(Ordering::Acquire);
        // SAFETY: a published front end is never freed.
        if let Some(f) = unsafe { current.as_ref() } {
            let pid = fdtable::getpid_raw();
            if f.pid == pid {
                return Some(Task::Own(f));
            }
            if FORKED_CHILD.load(Ordering::Acquire) != pid {
                return Some(Task::Borrowed(f));
            }
        }
        if ABSENT.load(Ordering::Relaxed) {
            return None;
        }
        let Some(dir) = std::env::var_os(TESTBED_ENV) else {
            ABSENT.store(true, Ordering::Relaxed);
            return None;
        };
        // SAFETY: a published front end is never freed.
        if let Some(parent) = unsafe { current.as_ref() } {
            parent.close_parents_connections();
        }
        let front = match Front::new(Path::new(&dir)) {
            Ok(f) => {
                // SAFETY: a published front end is never freed.
                if let Some(parent) = unsafe { current.as_ref() } {
                    *f.inherited.lock().unwrap() = parent.inherited_mappings();
                }
                f
            }
            Err(e) => {
                eprintln!("barmap: cannot read the testbed {dir:?}: {e}");
                ABSENT.store(true, Ordering::Relaxed);
                return None;
            }
        };
        watch_forks();
        let fresh = Box::into_raw(Box::new(front));
        match FRONT.compare_exchange(current, fresh, Ordering::AcqRel, Ordering::Acquire) {
            // SAFETY: published, never freed from here on.
            Ok(_) => {
                // SAFETY: just published, never freed.
                let f = unsafe { &*fresh };
                f.files
                    .adopt_inherited(&f.locks, &|fd, kind| f.adopt(fd, kind));
                Some(Task::Own(f))
            }
            Err(other) => {
                // SAFETY: never published; ours to free.
                drop(unsafe { Box::from_raw(fresh) });
                // SAFETY: a published front end is never freed.
                unsafe { other.as_ref() }.map(Task::Own)
            }
        }
    }

    /// In a forked child, whose copy of the parent's front end (this) is
    /// never used again: closes the child's copies of the parent's
    /// connections to device servers, so that the server sees the parent
    /// go when it goes (the child has connections of its own).
    fn close_parents_connections(&self) {
        let Ok(devices) = self.devices.try_lock() else {
            return;
        };
        for d in devices.iter().flatten() {
            if let Some(r) = d.remote() {
                // SAFETY: closes this process's copy of a socket that only
                // the parent's (never again used) front end names.
                unsafe { libc::syscall(libc::SYS_close, r.client().socket_fd()) };
            }
        }
    }

    /// Whether the number `fd` has an entry in the front end's table, if
    /// there is a front end: a test without any syscall, for the wrappers
    /// of calls on every fd (close, dup).
    pub fn known_number(fd: i32) -> bool {
        let current = FRONT.load(Ordering::Acquire);
        // SAFETY: a published front end is never freed.
        unsafe { current.as_ref() }.is_some_and(|f| f.files.has_number(fd))
    }

    /// Where a call on `fd` goes, as the calling task sees it: the cheap
    /// test (the number was never a front-end fd) comes first, so calls on
    /// the program's other fds cost no syscall.
    pub fn route_fd(fd: i32) -> FdRoute {
        let current = FRONT.load(Ordering::Acquire);
        // SAFETY: a published front end is never freed.
        let known = unsafe { current.as_ref() }.is_some_and(|f| f.files.has_number(fd));
        if !known && !current.is_null() {
            return FdRoute::Pass;
        }
        match Front::task() {
            None => FdRoute::Pass,
            Some(Task::Own(f)) => match f.files.get(fd, true) {
                None => FdRoute::Pass,
                Some(Slot::Own(file)) => FdRoute::Serve(f, file),
                Some(Slot::Foreign(kind)) => FdRoute::Refuse(kind, Errno::ENODEV),
            },
            // Read only: the table is the parent's.
            Some(Task::Borrowed(f)) => match f.files.get(fd, false) {
                None => FdRoute::Pass,
                Some(Slot::Own(file)) => FdRoute::Refuse(Kind::of(&file), Errno::ENODEV),
                Some(Slot::Foreign(kind)) => FdRoute::Refuse(kind, Errno::ENODEV),
            },
        }
    }

    /// A front end over the testbed at `dir`.
    pub fn new(dir: &Path) -> std::io::Result<Front> {
        let spec = RunSpec::load(dir)?;
        Ok(Front {
            testbed: dir.to_path_buf(),
            locks: spec
                .locks
                .as_ref()
                .map(PathBuf::from)
                .unwrap_or_else(|| locks_dir(dir)),
            devices: Mutex::new(vec![None; spec.devices.len()]),
            spec,
            pid: std::process::id(),
            files: FdTable::default(),
            maps: Mutex::new(Vec::new()),
            inherited: Mutex::new(Vec::new()),
        })
    }

    /// The testbed directory.
    pub fn testbed(&self) -> &Path {
        &self.testbed
    }

    /// The path to use instead of `path` for a lookup (stat, readlink,
    /// opendir, access, or an open of a sysfs file), if it is redirected.
    pub fn redirect(&self, path: &str) -> Option<PathBuf> {
        match paths::route(path, &self.testbed, false) {
            Route::Redirect(p) => Some(p),
            _ => None,
        }
    }

    /// Whether `open(path)` is a VFIO node this front end serves.
    pub fn serves(&self, path: &str) -> bool {
        matches!(paths::route(path, &self.testbed, true), Route::Node(_))
    }

    /// The device at position `i`, built on first use.
    pub(crate) fn device(&self, i: usize) -> Result<Arc<EmuDevice>, Errno> {
        let mut devices = self.devices.lock().unwrap();
        let slot = devices.get_mut(i).ok_or(Errno::ENOENT)?;
        if let Some(d) = slot {
            return Ok(d.clone());
        }
        let spec = &self.spec.devices[i];
        if spec.total_vfs > 0 {
            sriov::set_numvfs(&spec.bdf, sriov::numvfs(&self.testbed, &spec.bdf));
        }
        let d = Arc::new(EmuDevice::new(spec.clone()).map_err(|e| {
            tracing::error!(error = %e, "building the emulated device failed");
            Errno::ENODEV
        })?);
        let _ = d.testbed.set(self.testbed.clone());
        *slot = Some(d.clone());
        Ok(d)
    }

    /// Whether the function `d` exists now: always, but for an SR-IOV VF,
    /// which exists while its PF's `sriov_numvfs` covers it.
    fn present(&self, d: &spec::DeviceSpec) -> bool {
        match &d.physfn {
            Some((pf, k)) => *k < sriov::numvfs(&self.testbed, pf),
            None => true,
        }
    }

    /// `open(path, flags)` of a sysfs attribute whose writes the front
    /// end serves (an SR-IOV PF's `sriov_numvfs`) for writing: Some(new
    /// fd or errno), or None for any other path or a read-only open
    /// (which reads the testbed's file).
    ///
    /// The fd is a memfd that the front end knows as the attribute: a
    /// `write` through libc is the attribute's store (with its errno), a
    /// `read` its current value. Writes that do not reach the wrappers
    /// (stdio's, inside libc: `fprintf`, a shell's `echo > file`) land in
    /// the memfd and are stored when its last fd is closed (their errors
    /// are reported on stderr, having no caller left to return them to).
    pub fn open_attr(&self, path: &str, flags: i32) -> Option<Result<i32, Errno>> {
        if flags & libc::O_ACCMODE == libc::O_RDONLY {
            return None;
        }
        let mut clean = String::new();
        for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            clean.push('/');
            clean.push_str(part);
        }
        let bdf = sriov::numvfs_attr_of(&clean)?;
        let pf = self
            .spec
            .devices
            .iter()
            .position(|d| d.bdf == bdf && d.total_vfs > 0)?;
        if testbed::check(&self.testbed).is_err() {
            return Some(Err(Errno::ENOENT));
        }
        Some((|| {
            let fd = self.placeholder(Kind::NumVfs, flags & libc::O_CLOEXEC != 0)?;
            // SAFETY: F_DUPFD_CLOEXEC of the fd just made; a new fd or -1.
            let own = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
            if own < 0 {
                let e = last_errno();
                // SAFETY: our own fd, never handed out.
                unsafe { libc::close(fd) };
                return Err(e);
            }
            // SAFETY: the dup is new and ours alone.
            let own = unsafe { std::os::fd::OwnedFd::from_raw_fd(own) };
            let attr = Arc::new(sriov::NumVfsAttr::new(pf, own));
            self.install_at(fd, File::NumVfs(attr))
        })())
    }

    /// A write of `buf` to the `sriov_numvfs` of the PF at `pf`: its
    /// length, or the kernel's errno.
    pub fn write_numvfs(&self, pf: usize, buf: &[u8]) -> Result<i64, Errno> {
        let spec = &self.spec.devices[pf];
        let vfs: Vec<&spec::DeviceSpec> = self
            .spec
            .devices
            .iter()
            .filter(|d| d.physfn.as_ref().is_some_and(|(p, _)| *p == spec.bdf))
            .collect();
        let change = sriov::store_numvfs(&self.testbed, spec, &vfs, buf)?;
        if change == sriov::Change::Disabled {
            // Removed functions: a later enable makes new ones.
            let mut devices = self.devices.lock().unwrap();
            for (i, d) in self.spec.devices.iter().enumerate() {
                if d.physfn.as_ref().is_some_and(|(p, _)| *p == spec.bdf) {
                    devices[i] = None;
                }
            }
        }
        Ok(buf.len() as i64)
    }

    /// Every device built so far.
    pub fn devices(&self) -> Vec<Arc<EmuDevice>> {
        self.devices
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .cloned()
            .collect()
    }

    fn placeholder(&self, kind: Kind, cloexec: bool) -> Result<i32, Errno> {
        let cname = std::ffi::CString::new(kind.memfd_name()).unwrap();
        let flags = if cloexec { libc::MFD_CLOEXEC } else { 0 };
        // SAFETY: memfd_create with a valid C string; a new fd or -1.
        let fd = unsafe { libc::memfd_create(cname.as_ptr(), flags) };
        if fd < 0 {
            return Err(Errno(
                std::io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EMFILE),
            ));
        }
        Ok(fd)
    }

    fn install(&self, file: File, cloexec: bool) -> Result<i32, Errno> {
        if let File::Device(d) = &file {
            if let Some(i) = self.served_index(&d.dev) {
                let fd = self.hold_device(i, cloexec)?;
                return self.install_at(fd, file);
            }
        }
        let fd = self.placeholder(Kind::of(&file), cloexec)?;
        self.install_at(fd, file)
    }

    /// The position of `dev` in the run, if every process of the run
    /// reaches it through a server (`--shared`, `--server`, `vfio-user:`):
    /// its device fds are then shared across processes.
    pub(crate) fn served_index(&self, dev: &EmuDevice) -> Option<usize> {
        dev.remote()?;
        self.spec.devices.iter().position(|d| d.bdf == dev.spec.bdf)
    }

    /// A device fd of the served device at `i`: a new open of the
    /// testbed's `locks/device-<i>`, locked shared. Every process that
    /// holds a copy of it (inherited, received) reaches the same device
    /// through its own connection to the server ([`Front::adopt`]), and
    /// while any copy is open anywhere the device's group cannot be opened
    /// (EBUSY), as a device fd holds its group on the kernel.
    fn hold_device(&self, i: usize, cloexec: bool) -> Result<i32, Errno> {
        let fd = self.open_lock(&format!("device-{i}"), cloexec)?;
        // SAFETY: flock on our own fd.
        if unsafe { libc::flock(fd, libc::LOCK_SH | libc::LOCK_NB) } != 0 {
            let e = last_errno();
            // SAFETY: our own fd, never handed out.
            unsafe { libc::close(fd) };
            return Err(e);
        }
        Ok(fd)
    }

    /// Whether a device fd of the served device at `i` is open in any
    /// process (its lock file is held).
    fn device_held(&self, i: usize) -> bool {
        let Ok(fd) = self.open_lock(&format!("device-{i}"), true) else {
            return false;
        };
        // SAFETY: flock on our own fd, closed right after.
        let held = unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0;
        // SAFETY: our own fd (closing it drops the probe's lock).
        unsafe { libc::close(fd) };
        held
    }

    /// Whether the group of `dev`, a served device, is open in some
    /// process of its server (its lock file is held): a cdev of it cannot
    /// be bound then (`vfio_device_block_group`).
    pub fn group_held(&self, dev: &EmuDevice) -> bool {
        let Some(i) = self.served_index(dev) else {
            return false;
        };
        let n = self.spec.devices[i].group;
        let Ok(fd) = self.open_lock(&format!("group-{n}"), true) else {
            return false;
        };
        // SAFETY: flock on our own fd, closed right after.
        let held = unsafe { libc::flock(fd, libc::LOCK_SH | libc::LOCK_NB) } != 0;
        // SAFETY: our own fd (closing it drops the probe's lock).
        unsafe { libc::close(fd) };
        held
    }

    /// An open of the testbed's lock file `name`.
    fn open_lock(&self, name: &str, cloexec: bool) -> Result<i32, Errno> {
        let dir = &self.locks;
        let _ = std::fs::create_dir(dir);
        let path = std::ffi::CString::new(dir.join(name).into_os_string().into_encoded_bytes())
            .map_err(|_| Errno::EINVAL)?;
        let flags = libc::O_RDWR
            | libc::O_CREAT
            | libc::O_NOFOLLOW
            | if cloexec { libc::O_CLOEXEC } else { 0 };
        // SAFETY: a NUL-terminated path; a new fd or -1.
        let fd = unsafe { libc::open(path.as_ptr(), flags, 0o600) };
        if fd < 0 {
            return Err(last_errno());
        }
        Ok(fd)
    }

    /// What a front-end fd of another process (inherited, received) is in
    /// this one: a device fd of a served device is this process's own
    /// device file on the same device (over this process's own connection
    /// to the server); anything else stays foreign.
    fn adopt(&self, fd: i32, kind: Kind) -> Option<File> {
        match kind {
            Kind::Device => {
                let i = fdtable::lock_name(fd, &self.locks)?
                    .strip_prefix("device-")?
                    .parse::<usize>()
                    .ok()?;
                self.spec.devices.get(i)?.remote_socket()?;
                let dev = self.device(i).ok()?;
                Some(File::Device(Arc::new(DeviceFile::open(dev, false))))
            }
            Kind::Group => {
                let n = fdtable::lock_name(fd, &self.locks)?
                    .strip_prefix("group-")?
                    .parse::<u32>()
                    .ok()?;
                let i = self.spec.devices.iter().position(|d| d.group == n)?;
                self.spec.devices[i].remote_socket()?;
                let dev = self.device(i).ok()?;
                // The container the group's opener attached it to, by the
                // identity it recorded in the group's file.
                let container =
                    shared_state::read_group(fd).and_then(|id| self.container_by_id(id));
                Some(File::Group(Arc::new(Group::adopted(dev, container))))
            }
            // The iommufd's objects come from its record at its first
            // command here (`Iommufd::shared`).
            Kind::Iommufd if self.shares_files() => {
                Some(File::Iommufd(Arc::new(Iommufd::default())))
            }
            Kind::Container
                if self
                    .spec
                    .devices
                    .iter()
                    .any(|d| d.remote_socket().is_some()) =>
            {
                let iommu = shared_state::read_container(fd);
                Some(File::Container(Arc::new(Container::adopted(iommu))))
            }
            _ => None,
        }
    }

    /// This process's container whose open file has identity `id`, adopted
    /// now if an fd of this process names it but the table does not yet.
    fn container_by_id(&self, id: fdtable::FileId) -> Option<Arc<Container>> {
        let find = || {
            self.files
                .snapshot()
                .into_iter()
                .find_map(|(fd, slot)| match slot {
                    Slot::Own(File::Container(c)) if fdtable::identity(fd) == Some(id) => Some(c),
                    _ => None,
                })
        };
        if let Some(c) = find() {
            return Some(c);
        }
        let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        let fd = fds
            .into_iter()
            .find(|&fd| fdtable::identity(fd) == Some(id))?;
        self.files
            .adopt(fd, &self.locks, &|fd, kind| self.adopt(fd, kind));
        find()
    }

    /// Whether the last device fd of `dev` anywhere has gone (for a device
    /// not shared across processes: always).
    pub fn released_everywhere(&self, dev: &EmuDevice) -> bool {
        self.served_index(dev).is_none_or(|i| !self.device_held(i))
    }

    /// Records `fd` (open, ours) as standing for `file`.
    fn install_at(&self, fd: i32, file: File) -> Result<i32, Errno> {
        let Some(id) = fdtable::identity(fd) else {
            return Err(Errno::EBADF);
        };
        self.files.insert(fd, id, Slot::Own(file));
        Ok(fd)
    }

    /// The file `fd` stands for, if it is one of this process's (and
    /// still the same open file).
    pub fn file(&self, fd: i32) -> Option<File> {
        match self.files.get(fd, true)? {
            Slot::Own(f) => Some(f),
            Slot::Foreign(_) => None,
        }
    }

    /// Whether `fd` is one of the front end's fds (this process's or
    /// another's), by the identity of its open file.
    pub fn owns(&self, fd: i32) -> bool {
        self.files.get(fd, true).is_some()
    }

    /// Records `fd`, received from another process (`SCM_RIGHTS`): a
    /// device fd of a served device is this process's own from now on,
    /// any other front-end file foreign.
    pub fn received(&self, fd: i32) {
        self.files
            .adopt(fd, &self.locks, &|fd, kind| self.adopt(fd, kind));
    }

    /// `open(path, flags)` of a VFIO node: a new fd, or the kernel's errno.
    pub fn open(&self, path: &str, flags: i32) -> Result<i32, Errno> {
        let cloexec = flags & libc::O_CLOEXEC != 0;
        let Route::Node(node) = paths::route(path, &self.testbed, true) else {
            return Err(Errno::ENOENT);
        };
        let find = |f: &dyn Fn(&spec::DeviceSpec) -> bool| {
            self.spec
                .devices
                .iter()
                .position(|d| f(d) && self.present(d))
                .ok_or(Errno::ENOENT)
        };
        let file = match node {
            Node::Container => File::Container(Arc::new(Container::default())),
            Node::Iommufd => File::Iommufd(Arc::new(Iommufd::default())),
            Node::Group(n) => {
                let index = find(&|d| d.group == n)?;
                // The group's single open, across processes: the lock of
                // the open file this fd names, held while any copy of it
                // is open anywhere.
                let lock = self.lock_group(n, cloexec)?;
                self.files.sweep();
                if self.spec.devices[index].remote_socket().is_some() && self.device_held(index) {
                    // A device fd of the group is open in some process.
                    // SAFETY: our own fd, never handed out.
                    unsafe { libc::close(lock) };
                    return Err(Errno::EBUSY);
                }
                let opened = (|| {
                    let dev = self.device(index)?;
                    let mut open = dev.open.lock().unwrap();
                    if *open & GROUP_OPEN != 0 {
                        return Err(Errno::EBUSY);
                    }
                    *open |= GROUP_OPEN;
                    drop(open);
                    Ok(File::Group(Arc::new(Group::new(dev))))
                })();
                return match opened {
                    Ok(file) => self.install_at(lock, file),
                    Err(e) => {
                        // SAFETY: our own fd, never handed out.
                        unsafe { libc::close(lock) };
                        Err(e)
                    }
                };
            }
            Node::Cdev(n) => {
                let dev = self.device(find(&|d| d.cdev == n)?)?;
                File::Device(Arc::new(DeviceFile::open(dev, true)))
            }
        };
        self.install(file, cloexec)
    }

    /// An open of the lock file of group `n`, locked: EBUSY while any
    /// process holds the group open.
    fn lock_group(&self, n: u32, cloexec: bool) -> Result<i32, Errno> {
        let dir = &self.locks;
        let _ = std::fs::create_dir(dir);
        let path = std::ffi::CString::new(
            dir.join(format!("group-{n}"))
                .into_os_string()
                .into_encoded_bytes(),
        )
        .map_err(|_| Errno::EINVAL)?;
        let flags = libc::O_RDWR
            | libc::O_CREAT
            | libc::O_NOFOLLOW
            | if cloexec { libc::O_CLOEXEC } else { 0 };
        // SAFETY: a NUL-terminated path; a new fd or -1.
        let fd = unsafe { libc::open(path.as_ptr(), flags, 0o600) };
        if fd < 0 {
            return Err(last_errno());
        }
        // SAFETY: flock on our own fd.
        if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = last_errno();
            // SAFETY: our own fd, never handed out.
            unsafe { libc::close(fd) };
            return Err(if e.0 == libc::EWOULDBLOCK {
                Errno::EBUSY
            } else {
                e
            });
        }
        // A fresh open: attached to nothing yet.
        shared_state::write_group(fd, None);
        Ok(fd)
    }

    /// The program closed `fd` (already closed in the kernel).
    pub fn close(&self, fd: i32) {
        drop(self.files.remove(fd)); // dropping may release a device
    }

    /// The program closed every fd in `first..=last` (`close_range`,
    /// `closefrom`; already closed in the kernel).
    pub fn close_range(&self, first: u32, last: u32) {
        self.files.remove_range(first, last);
    }

    /// The program duplicated `old` as `new` (already done in the kernel):
    /// `new` stands for what `old` does, and no longer for what it did.
    pub fn dup(&self, old: i32, new: i32) {
        self.files.dup(old, new);
    }

    /// `ioctl(fd, req, arg)` on one of the front end's fds.
    pub fn ioctl(&self, fd: i32, req: u64, arg: usize) -> Result<i64, Errno> {
        let file = self.file(fd).ok_or(Errno::EBADF)?;
        self.ioctl_fd(fd, file, req, arg)
    }

    /// `ioctl(fd, req, arg)` on `file`, which `fd` names.
    pub fn ioctl_fd(&self, fd: i32, file: File, req: u64, arg: usize) -> Result<i64, Errno> {
        let r = match &file {
            // A shared iommufd's record around the command.
            File::Iommufd(i) => i.shared(Some(fd), || self.ioctl_file(file.clone(), req, arg)),
            _ => self.ioctl_file(file.clone(), req, arg),
        };
        if r.is_ok() {
            self.record_shared_state(fd, &file, req);
        }
        r
    }

    /// Whether the run's devices are served, so that VFIO files are
    /// shared by the processes that hold them (`--shared`, `--server`,
    /// `vfio-user:`).
    pub fn shares_files(&self) -> bool {
        self.spec
            .devices
            .iter()
            .any(|d| d.remote_socket().is_some())
    }

    /// An fd of this process that names the iommufd `i`, if one does.
    pub fn iommufd_fd(&self, i: &Iommufd) -> Option<i32> {
        self.files
            .snapshot()
            .into_iter()
            .find_map(|(fd, slot)| match slot {
                Slot::Own(File::Iommufd(a)) if std::ptr::eq(Arc::as_ptr(&a), i) => {
                    self.files.get(fd, false).map(|_| fd)
                }
                _ => None,
            })
    }

    /// After a successful container or group ioctl that changes what
    /// another process holding the same open file must see (`SET_IOMMU`,
    /// `GROUP_SET_CONTAINER`/`UNSET_CONTAINER`): records it in the file,
    /// for [`Front::adopt`] in that process.
    fn record_shared_state(&self, fd: i32, file: &File, req: u64) {
        if !self
            .spec
            .devices
            .iter()
            .any(|d| d.remote_socket().is_some())
        {
            return;
        }
        let req = req as libc::c_ulong;
        match file {
            File::Container(c) if req == barmap_vfio::uapi::VFIO_SET_IOMMU => {
                shared_state::write_container(fd, c.iommu());
            }
            File::Group(g) if req == barmap_vfio::uapi::VFIO_GROUP_SET_CONTAINER => {
                let container = g.container().and_then(|k| {
                    self.files
                        .snapshot()
                        .into_iter()
                        .find_map(|(cfd, slot)| match slot {
                            Slot::Own(File::Container(c)) if Arc::ptr_eq(&c, &k) => {
                                fdtable::identity(cfd)
                            }
                            _ => None,
                        })
                });
                shared_state::write_group(fd, container);
            }
            File::Group(_) if req == barmap_vfio::uapi::VFIO_GROUP_UNSET_CONTAINER => {
                shared_state::write_group(fd, None);
            }
            _ => {}
        }
    }

    /// `ioctl` on `file`.
    pub fn ioctl_file(&self, file: File, req: u64, arg: usize) -> Result<i64, Errno> {
        let lookup = |fd: i32| self.file(fd);
        match file {
            File::Container(c) => c.ioctl(req, arg),
            File::Iommufd(i) => i.ioctl(req, arg),
            File::Group(g) => g.ioctl(req, arg, &lookup, &|f| self.install(f, true)),
            File::Device(d) => d.ioctl(req, arg, &lookup),
            // A sysfs attribute: inappropriate ioctl for a regular file.
            File::NumVfs(_) => Err(Errno::ENOTTY),
        }
    }

    fn device_file(&self, fd: i32) -> Result<Arc<DeviceFile>, Errno> {
        match self.file(fd) {
            Some(File::Device(d)) => Ok(d),
            Some(_) => Err(Errno::EINVAL),
            None => Err(Errno::EBADF),
        }
    }

    /// `read(2)` on a device fd: at the file position, which it advances
    /// (the position lives in the open file, shared by its duplicates;
    /// `lseek` on a VFIO fd is `ESPIPE`, as on the kernel). `iov` is a list
    /// of (address, length), served one after another as `readv` does.
    pub fn read_at_position(
        &self,
        fd: i32,
        iov: &[(usize, usize)],
        write: bool,
    ) -> Result<i64, Errno> {
        let d = match self.file(fd).ok_or(Errno::EBADF)? {
            File::Device(d) => d,
            File::NumVfs(a) => return self.numvfs_rw(fd, &a, iov, write),
            // No read or write method: vfs_read's EINVAL.
            _ => return Err(Errno::EINVAL),
        };
        // SAFETY: lseek on an fd the table just checked.
        let pos = unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) };
        if pos < 0 {
            return Err(last_errno());
        }
        let done = rw_vectored(&d.dev, iov, pos, write)?;
        // SAFETY: as above.
        unsafe { libc::lseek(fd, pos + done, libc::SEEK_SET) };
        Ok(done)
    }

    /// `read` or `write` on an open `sriov_numvfs`: a read gives the
    /// current count at the file position, a write is the store (the
    /// whole of the first buffer, as sysfs takes one write whole).
    fn numvfs_rw(
        &self,
        fd: i32,
        a: &sriov::NumVfsAttr,
        iov: &[(usize, usize)],
        write: bool,
    ) -> Result<i64, Errno> {
        if write {
            let &(buf, len) = iov.first().ok_or(Errno::EINVAL)?;
            let bytes = user::read(buf, len.min(4096))?;
            return self.write_numvfs(a.pf, &bytes);
        }
        // SAFETY: lseek on an fd the table just checked.
        let pos = unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) };
        let n = self.read_numvfs(a.pf, iov, pos.max(0) as usize)?;
        // SAFETY: as above.
        unsafe { libc::lseek(fd, pos + n, libc::SEEK_SET) };
        Ok(n)
    }

    /// The current `sriov_numvfs` of the PF at `pf` from `pos`, into the
    /// program's buffers.
    fn read_numvfs(&self, pf: usize, iov: &[(usize, usize)], pos: usize) -> Result<i64, Errno> {
        let text = format!(
            "{}\n",
            sriov::numvfs(&self.testbed, &self.spec.devices[pf].bdf)
        );
        let mut left = text.as_bytes().get(pos..).unwrap_or_default();
        let mut done = 0usize;
        for &(buf, len) in iov {
            let n = len.min(left.len());
            user::write(buf, &left[..n])?;
            done += n;
            left = &left[n..];
            if left.is_empty() {
                break;
            }
        }
        Ok(done as i64)
    }

    /// `preadv`/`pwritev` on a device fd at `off`.
    pub fn rw_at(
        &self,
        fd: i32,
        iov: &[(usize, usize)],
        off: i64,
        write: bool,
    ) -> Result<i64, Errno> {
        match self.file(fd).ok_or(Errno::EBADF)? {
            File::Device(d) => rw_vectored(&d.dev, iov, off, write),
            File::NumVfs(a) if write => self.numvfs_rw(fd, &a, iov, true),
            File::NumVfs(a) => {
                let off = usize::try_from(off).map_err(|_| Errno::EINVAL)?;
                self.read_numvfs(a.pf, iov, off)
            }
            _ => Err(Errno::EINVAL),
        }
    }

    /// `pread(fd, buf, len, off)` on a device fd (or an open
    /// `sriov_numvfs`: its current count).
    pub fn pread(&self, fd: i32, buf: usize, len: usize, off: i64) -> Result<i64, Errno> {
        if let Some(File::NumVfs(a)) = self.file(fd) {
            let off = usize::try_from(off).map_err(|_| Errno::EINVAL)?;
            return self.read_numvfs(a.pf, &[(buf, len)], off);
        }
        let d = self.device_file(fd)?;
        device::pread(&d.dev, buf, len, off as u64)
    }

    /// `pwrite(fd, buf, len, off)` on a device fd (or the store of an
    /// open `sriov_numvfs`).
    pub fn pwrite(&self, fd: i32, buf: usize, len: usize, off: i64) -> Result<i64, Errno> {
        if let Some(File::NumVfs(a)) = self.file(fd) {
            return self.numvfs_rw(fd, &a, &[(buf, len)], true);
        }
        let d = self.device_file(fd)?;
        device::pwrite(&d.dev, buf, len, off as u64)
    }

    /// `mmap` of a device fd: the mapping's address.
    pub fn mmap(
        &self,
        addr: usize,
        len: usize,
        prot: i32,
        flags: i32,
        fd: i32,
        off: i64,
    ) -> Result<usize, Errno> {
        let d = self.device_file(fd).map_err(|_| Errno::ENODEV)?;
        if let Some(r) = d.dev.remote() {
            let off = off as u64;
            let (index, at) = (
                (off >> barmap_vfio::uapi::VFIO_PCI_OFFSET_SHIFT) as u32,
                off & ((1 << barmap_vfio::uapi::VFIO_PCI_OFFSET_SHIFT) - 1),
            );
            return match r.mmap(addr, len, prot, flags, index, at)? {
                remote::RemoteMapping::File(start) => {
                    // The server's file: not barmap's mapping, BAR memory
                    // all the same (iommufd cannot pin it).
                    let len = len.next_multiple_of(4096);
                    BAR_RANGES.lock().unwrap().push((start, len));
                    FILE_RANGES.lock().unwrap().push((start, len));
                    Ok(start)
                }
                remote::RemoteMapping::Trapped(mapping) => {
                    let inherit = self.served_index(&d.dev).map(|device| Inherited {
                        start: mapping.addr(),
                        len: mapping.len(),
                        device,
                        index,
                        at,
                        prot,
                    });
                    Ok(self.keep(mapping, &d.dev, inherit))
                }
            };
        }
        let mapping = device::mmap(&d.dev, addr, len, prot, flags, off as u64)?;
        Ok(self.keep(mapping, &d.dev, None))
    }

    /// In a forked child, the copy of its parent's front end (this): the
    /// register mappings the child kept, for the child's front end.
    fn inherited_mappings(&self) -> Vec<Inherited> {
        let mut out = Vec::new();
        // try_lock: another thread of the parent may have held a lock at
        // the fork, and nobody will release it in the child.
        if let Ok(maps) = self.maps.try_lock() {
            out.extend(maps.iter().filter_map(|m| m.inherit));
        }
        if let Ok(pending) = self.inherited.try_lock() {
            out.extend(pending.iter().copied());
        }
        out
    }

    /// A forked child's first access at `addr` in a register mapping its
    /// parent made (and the child kept): maps what is left of that range
    /// again, at the same addresses, as the child's own mapping of the
    /// child's own device (over its own connection to the server, so the
    /// access reaches the device the parent's did). Whether it did.
    fn adopt_inherited_mapping(&self, addr: usize) -> bool {
        let rec = {
            let mut pending = self.inherited.lock().unwrap();
            let Some(i) = pending
                .iter()
                .position(|r| r.start <= addr && addr - r.start < r.len)
            else {
                return false;
            };
            pending.swap_remove(i)
        };
        {
            // The parent's entry, copied with its memory.
            let mut ranges = BAR_RANGES.lock().unwrap();
            if let Some(i) = ranges.iter().position(|&r| r == (rec.start, rec.len)) {
                ranges.swap_remove(i);
            }
        }
        let dev = match self.device(rec.device) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(errno = e.0, "a kept register mapping: no device");
                return false;
            }
        };
        let Some(remote) = dev.remote() else {
            return false;
        };
        let mut any = false;
        // Only what the child still has there (it may have unmapped parts).
        for (s, e) in remote::shared_runs(rec.start, rec.start + rec.len) {
            let at = rec.at + (s - rec.start) as u64;
            let flags = libc::MAP_SHARED | libc::MAP_FIXED;
            match remote.mmap(s, e - s, rec.prot, flags, rec.index, at) {
                Ok(remote::RemoteMapping::Trapped(m)) => {
                    let inherit = Inherited {
                        start: m.addr(),
                        len: m.len(),
                        at,
                        ..rec
                    };
                    self.keep(m, &dev, Some(inherit));
                    any = true;
                }
                Ok(remote::RemoteMapping::File(start)) => {
                    BAR_RANGES.lock().unwrap().push((start, e - s));
                    FILE_RANGES.lock().unwrap().push((start, e - s));
                    any = true;
                }
                Err(err) => {
                    tracing::warn!(
                        errno = err.0,
                        "mapping a kept register mapping again failed"
                    );
                }
            }
        }
        any
    }

    /// Records a barmap mapping of a BAR (it lives until the program
    /// unmaps it all); its address.
    fn keep(
        &self,
        mapping: barmap_models::ModelMapping,
        dev: &Arc<EmuDevice>,
        inherit: Option<Inherited>,
    ) -> usize {
        let start = mapping.addr();
        let len = mapping.len();
        BAR_RANGES.lock().unwrap().push((start, len));
        let mut maps = self.maps.lock().unwrap();
        maps.push(BarMap {
            start,
            len,
            mapping,
            _dev: dev.clone(),
            inherit,
        });
        start
    }

    /// The program unmapped `addr..addr+len` (already done in the kernel:
    /// barmap forgot the range through its userfaultfd's UNMAP events):
    /// drops the records of mappings with nothing left.
    pub fn munmapped(&self, addr: usize, len: usize) {
        dma::process_unmapped(addr, len);
        let end = addr.saturating_add(len);
        {
            // Mappings of a server's file that are wholly unmapped now.
            let mut files = FILE_RANGES.lock().unwrap();
            let mut ranges = BAR_RANGES.lock().unwrap();
            files.retain(|&(s, l)| {
                let gone = addr <= s && s + l <= end;
                if gone {
                    if let Some(i) = ranges.iter().position(|&r| r == (s, l)) {
                        ranges.swap_remove(i);
                    }
                }
                !gone
            });
        }
        let gone: Vec<BarMap> = {
            let mut maps = self.maps.lock().unwrap();
            let (gone, kept) = maps
                .drain(..)
                .partition(|m| m.start < end && addr < m.start + m.len && m.mapping.is_gone());
            *maps = kept;
            gone
        };
        // One entry per record: another thread's new mapping may already
        // have the same addresses, and its entry stays.
        let mut ranges = BAR_RANGES.lock().unwrap();
        for m in &gone {
            if let Some(i) = ranges.iter().position(|&r| r == (m.start, m.len)) {
                ranges.swap_remove(i);
            }
        }
        drop(ranges);
        drop(gone);
    }

    /// A description of every object's state (fds, containers, groups, IOMMU
    /// tables, interrupts, config space): two equal digests mean that
    /// nothing observable changed in between (for tests of failed calls).
    pub fn digest(&self) -> String {
        let files: std::collections::BTreeMap<i32, String> = self
            .files
            .snapshot()
            .into_iter()
            .map(|(fd, f)| (fd, format!("{f:?}")))
            .collect();
        let mut out = format!("{files:?}");
        for d in self.devices() {
            let mut cfg = [0u8; 64];
            if let Some(dev) = d.device() {
                let _ = dev.read_config(0, &mut cfg);
            }
            out += &format!("{cfg:?}{:?}", d.dma.lock().unwrap());
        }
        out
    }

    /// Counters of every device, as one JSON value per device (for the
    /// report at exit).
    pub fn report(&self) -> serde_json::Value {
        let devices: Vec<serde_json::Value> = self
            .devices()
            .iter()
            .map(|d| {
                // A fault answered with SIGBUS is counted right after the
                // answer: let the faults in flight finish, so the counters
                // add up (bounded: a thread blocked in a fault at exit is
                // not waited for).
                let Some(dev) = d.device() else {
                    // Served over vfio-user: the server keeps its counters.
                    return serde_json::json!({
                        "bdf": d.spec.bdf,
                        "model": d.spec.model,
                        "socket": d.spec.remote_socket(),
                    });
                };
                dev.wait_idle(std::time::Duration::from_millis(200));
                serde_json::json!({
                    "bdf": d.spec.bdf,
                    "policy": d.spec.policy,
                    "model": d.spec.model,
                    "stats": dev.stats(),
                    "iommu_faults": d.iommu_faults.to_json(),
                    "bug_events": dev.bug_events(),
                })
            })
            .collect();
        serde_json::json!({ "pid": self.pid, "devices": devices })
    }
}

/// How the calling task sees the front end ([`Front::task`]).
#[derive(Debug, Clone, Copy)]
pub enum Task {
    /// The process's own front end.
    Own(&'static Front),
    /// The front end of the process whose memory this task shares (a vfork
    /// or `clone(CLONE_VM)` child): to be read, never changed.
    Borrowed(&'static Front),
}

/// Where a call on an fd goes ([`Front::route_fd`]).
#[derive(Debug, Clone)]
pub enum FdRoute {
    /// Not a front-end file: the kernel serves it.
    Pass,
    /// One of this process's open files.
    Serve(&'static Front, File),
    /// A front-end file this task cannot reach (another process's, or a
    /// task sharing this process's memory): the call fails with the errno.
    Refuse(Kind, Errno),
}

/// The pid of this process if it began as a `fork()` child of a process
/// with a front end (set by the `pthread_atfork` child handler).
static FORKED_CHILD: AtomicU32 = AtomicU32::new(0);

extern "C" fn after_fork_in_child() {
    FORKED_CHILD.store(fdtable::getpid_raw(), Ordering::Release);
}

/// Registers the fork handler, once.
fn watch_forks() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a plain extern "C" fn without arguments.
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    });
}

/// The register trap's hook ([`barmap_models::trap::on_inherited_access`],
/// which the preload library sets): in a forked child, an access at `addr`
/// to a register mapping of a served device that the parent made maps it
/// again as the child's own (whether it did). A task sharing its parent's
/// memory (vfork, `clone(CLONE_VM)`) changes nothing: its access stays a
/// SIGSEGV.
pub fn adopt_on_access(addr: usize) -> bool {
    match Front::task() {
        Some(Task::Own(f)) => f.adopt_inherited_mapping(addr),
        _ => false,
    }
}

/// The directory of the groups' lock files in a testbed (when the run's
/// spec names no other, [`spec::RunSpec::locks`]).
pub fn locks_dir(testbed: &Path) -> PathBuf {
    testbed.join("locks")
}

fn last_errno() -> Errno {
    Errno(
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

/// Reads or writes the device at `pos`, one buffer after another, as the
/// kernel's `readv` does with a file that has only `read`: stops at the
/// first short transfer; an error after some bytes moved returns those.
fn rw_vectored(
    dev: &EmuDevice,
    iov: &[(usize, usize)],
    pos: i64,
    write: bool,
) -> Result<i64, Errno> {
    if pos < 0 {
        return Err(Errno::EINVAL);
    }
    let mut done: i64 = 0;
    for &(buf, len) in iov {
        let at = pos.checked_add(done).ok_or(Errno::EINVAL)?;
        let r = if write {
            device::pwrite(dev, buf, len, at as u64)
        } else {
            device::pread(dev, buf, len, at as u64)
        };
        match r {
            Ok(n) => {
                done += n;
                if (n as usize) < len {
                    break;
                }
            }
            Err(e) if done == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok(done)
}
