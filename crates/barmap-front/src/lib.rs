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
//! The devices live in the program's own process: no server, no socket.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]
#![warn(missing_docs)]

pub mod device;
pub mod dma;
pub mod files;
pub mod iommufd;
pub mod irq;
pub mod kselftest;
pub mod launch;
pub mod nodes;
pub mod paths;
pub mod spec;
pub mod testbed;
pub mod type1;
pub mod user;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::device::EmuDevice;
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
}

/// Address ranges of BAR mappings made through device fds, in this
/// process (for iommufd, which cannot DMA-map them).
static BAR_RANGES: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());

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
    spec: RunSpec,
    pid: u32,
    devices: Mutex<Vec<Option<Arc<EmuDevice>>>>,
    files: RwLock<HashMap<i32, File>>,
    maps: Mutex<Vec<BarMap>>,
}

static FRONT: AtomicPtr<Front> = AtomicPtr::new(std::ptr::null_mut());
/// Set once the process is known not to run under `barmap run` (no
/// testbed), so that libc calls stop asking.
static ABSENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Front {
    /// The front end of this process, if the program runs under
    /// `barmap run` (`BARMAP_TESTBED` names a testbed). A forked child gets
    /// a front end of its own (the parent's objects are the parent's).
    pub fn get() -> Option<&'static Front> {
        let pid = std::process::id();
        let current = FRONT.load(Ordering::Acquire);
        // SAFETY: a published front end is never freed.
        if let Some(f) = unsafe { current.as_ref() } {
            if f.pid == pid {
                return Some(f);
            }
        }
        if ABSENT.load(Ordering::Relaxed) {
            return None;
        }
        let Some(dir) = std::env::var_os(TESTBED_ENV) else {
            ABSENT.store(true, Ordering::Relaxed);
            return None;
        };
        let front = match Front::new(Path::new(&dir)) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("barmap: cannot read the testbed {dir:?}: {e}");
                ABSENT.store(true, Ordering::Relaxed);
                return None;
            }
        };
        let fresh = Box::into_raw(Box::new(front));
        match FRONT.compare_exchange(current, fresh, Ordering::AcqRel, Ordering::Acquire) {
            // SAFETY: published, never freed from here on.
            Ok(_) => Some(unsafe { &*fresh }),
            Err(other) => {
                // SAFETY: never published; ours to free.
                drop(unsafe { Box::from_raw(fresh) });
                // SAFETY: a published front end is never freed.
                unsafe { other.as_ref() }
            }
        }
    }

    /// A front end over the testbed at `dir`.
    pub fn new(dir: &Path) -> std::io::Result<Front> {
        let spec = RunSpec::load(dir)?;
        Ok(Front {
            testbed: dir.to_path_buf(),
            devices: Mutex::new(vec![None; spec.devices.len()]),
            spec,
            pid: std::process::id(),
            files: RwLock::new(HashMap::new()),
            maps: Mutex::new(Vec::new()),
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
    fn device(&self, i: usize) -> Result<Arc<EmuDevice>, Errno> {
        let mut devices = self.devices.lock().unwrap();
        let slot = devices.get_mut(i).ok_or(Errno::ENOENT)?;
        if let Some(d) = slot {
            return Ok(d.clone());
        }
        let d = Arc::new(EmuDevice::new(self.spec.devices[i].clone()).map_err(|e| {
            tracing::error!(error = %e, "building the emulated device failed");
            Errno::ENODEV
        })?);
        *slot = Some(d.clone());
        Ok(d)
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

    fn placeholder(&self, name: &str, cloexec: bool) -> Result<i32, Errno> {
        let cname = std::ffi::CString::new(name).unwrap();
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
        let name = match &file {
            File::Container(_) => "vfio-container",
            File::Group(_) => "vfio-group",
            File::Device(_) => "vfio-device",
            File::Iommufd(_) => "iommufd",
        };
        let fd = self.placeholder(name, cloexec)?;
        self.files.write().unwrap().insert(fd, file);
        Ok(fd)
    }

    fn file(&self, fd: i32) -> Option<File> {
        self.files.read().unwrap().get(&fd).cloned()
    }

    /// Whether `fd` is one of the front end's.
    pub fn owns(&self, fd: i32) -> bool {
        self.files.read().unwrap().contains_key(&fd)
    }

    /// `open(path, flags)` of a VFIO node: a new fd, or the kernel's errno.
    pub fn open(&self, path: &str, flags: i32) -> Result<i32, Errno> {
        let cloexec = flags & libc::O_CLOEXEC != 0;
        let Route::Node(node) = paths::route(path, &self.testbed, true) else {
            return Err(Errno::ENOENT);
        };
        let find = |f: &dyn Fn(&spec::DeviceSpec) -> bool| {
            self.spec.devices.iter().position(f).ok_or(Errno::ENOENT)
        };
        let file = match node {
            Node::Container => File::Container(Arc::new(Container::default())),
            Node::Iommufd => File::Iommufd(Arc::new(Iommufd::default())),
            Node::Group(n) => {
                let dev = self.device(find(&|d| d.group == n)?)?;
                let mut open = dev.open.lock().unwrap();
                if *open & GROUP_OPEN != 0 {
                    return Err(Errno::EBUSY);
                }
                *open |= GROUP_OPEN;
                drop(open);
                File::Group(Arc::new(Group::new(dev)))
            }
            Node::Cdev(n) => {
                let dev = self.device(find(&|d| d.cdev == n)?)?;
                File::Device(Arc::new(DeviceFile::open(dev, true)))
            }
        };
        self.install(file, cloexec)
    }

    /// The program closed `fd` (already closed in the kernel).
    pub fn close(&self, fd: i32) {
        let file = self.files.write().unwrap().remove(&fd);
        drop(file); // outside the lock: dropping may release a device
    }

    /// The program duplicated `old` as `new` (already done in the kernel).
    pub fn dup(&self, old: i32, new: i32) {
        if let Some(f) = self.file(old) {
            let replaced = self.files.write().unwrap().insert(new, f);
            drop(replaced);
        }
    }

    /// `ioctl(fd, req, arg)` on one of the front end's fds.
    pub fn ioctl(&self, fd: i32, req: u64, arg: usize) -> Result<i64, Errno> {
        let lookup = |fd: i32| self.file(fd);
        match self.file(fd).ok_or(Errno::EBADF)? {
            File::Container(c) => c.ioctl(req, arg),
            File::Iommufd(i) => i.ioctl(req, arg),
            File::Group(g) => g.ioctl(req, arg, &lookup, &|f| self.install(f, true)),
            File::Device(d) => d.ioctl(req, arg, &lookup),
        }
    }

    fn device_file(&self, fd: i32) -> Result<Arc<DeviceFile>, Errno> {
        match self.file(fd) {
            Some(File::Device(d)) => Ok(d),
            Some(_) => Err(Errno::EINVAL),
            None => Err(Errno::EBADF),
        }
    }

    /// `pread(fd, buf, len, off)` on a device fd.
    pub fn pread(&self, fd: i32, buf: usize, len: usize, off: i64) -> Result<i64, Errno> {
        let d = self.device_file(fd)?;
        device::pread(&d.dev, buf, len, off as u64)
    }

    /// `pwrite(fd, buf, len, off)` on a device fd.
    pub fn pwrite(&self, fd: i32, buf: usize, len: usize, off: i64) -> Result<i64, Errno> {
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
        let mapping = device::mmap(&d.dev, addr, len, prot, flags, off as u64)?;
        let start = mapping.addr();
        let len = mapping.len();
        BAR_RANGES.lock().unwrap().push((start, len));
        let mut maps = self.maps.lock().unwrap();
        maps.push(BarMap {
            start,
            len,
            mapping,
            _dev: d.dev.clone(),
        });
        Ok(start)
    }

    /// The program unmapped `addr..addr+len` (already done in the kernel:
    /// barmap forgot the range through its userfaultfd's UNMAP events):
    /// drops the records of mappings with nothing left.
    pub fn munmapped(&self, addr: usize, len: usize) {
        let end = addr.saturating_add(len);
        let gone: Vec<BarMap> = {
            let mut maps = self.maps.lock().unwrap();
            let (gone, kept) = maps
                .drain(..)
                .partition(|m| m.start < end && addr < m.start + m.len && m.mapping.is_gone());
            *maps = kept;
            gone
        };
        BAR_RANGES
            .lock()
            .unwrap()
            .retain(|&(s, l)| !gone.iter().any(|m| m.start == s && m.len == l));
        drop(gone);
    }

    /// A description of every object's state (fds, containers, groups, IOMMU
    /// tables, interrupts, config space): two equal digests mean that
    /// nothing observable changed in between (for tests of failed calls).
    pub fn digest(&self) -> String {
        let files: std::collections::BTreeMap<i32, String> = self
            .files
            .read()
            .unwrap()
            .iter()
            .map(|(fd, f)| (*fd, format!("{f:?}")))
            .collect();
        let mut out = format!("{files:?}");
        for d in self.devices() {
            let mut cfg = [0u8; 64];
            let _ = d.device().read_config(0, &mut cfg);
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
                serde_json::json!({
                    "bdf": d.spec.bdf,
                    "policy": d.spec.policy,
                    "model": d.spec.model,
                    "stats": d.device().stats(),
                    "bug_events": d.device().bug_events(),
                })
            })
            .collect();
        serde_json::json!({ "pid": self.pid, "devices": devices })
    }
}
