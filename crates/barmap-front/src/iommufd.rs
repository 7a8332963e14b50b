//! `/dev/iommu`: IOAS objects (`IOMMU_IOAS_ALLOC`, `MAP`, `UNMAP`,
//! `IOVA_RANGES`, `IOMMU_DESTROY`), paging HWPTs (`IOMMU_HWPT_ALLOC`, and
//! the automatic ones that attaching a device to an IOAS makes), device
//! binding, attach and replace for the vfio cdev, `IOMMU_GET_HW_INFO`, and
//! the VFIO type1 compatibility mode (the type1 ioctls on an iommufd).
//!
//! Every command is read as `iommufd_fops_ioctl` reads it: the user's
//! `size` first (EFAULT), an unknown command (ENOTTY), a size below the
//! command's first version (EINVAL), then bytes past what the kernel
//! knows must be zero (E2BIG). Object ids are allocated lowest first, as
//! the kernel's xarray does.
//!
//! The emulated IOMMU is modelled as a driver with no `hw_info` op (the
//! info type is `IOMMU_HW_INFO_TYPE_NONE`), no dirty tracking, no nesting
//! and no `domain_alloc_paging_flags`: a HWPT allocation with flags or
//! driver data is EOPNOTSUPP. As on the kernel, an IOAS pins the memory
//! of its mappings only while it has a domain (a HWPT): `IOAS_MAP` of
//! memory that cannot be pinned (PROT_NONE, read-only for a writable map,
//! a BAR mapping) is EFAULT then, and making the first HWPT over an IOAS
//! that maps such memory is EFAULT.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use barmap_vfio::iommufd as ifd;
use barmap_vfio::uapi as v;

use crate::device::EmuDevice;
use crate::dma::{DmaError, DmaMapping, DmaTable, IOMMU_PAGE, IOVA_RANGES};
use crate::user::Pod;
use crate::{type1, user, Errno};

/// An IOAS.
pub type Ioas = Arc<Mutex<DmaTable>>;

pub use ifd::{
    IommuHwInfo, IommuHwptAlloc, IOMMU_GET_HW_INFO, IOMMU_HWPT_ALLOC,
    IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED, IOMMU_HW_INFO_FLAG_INPUT_TYPE,
};

/// The first and last command numbers that iommufd's table holds
/// (`IOMMUFD_CMD_BASE` .. `IOMMUFD_CMD_IOAS_NOIOMMU_GET_PA`); any other
/// number goes to the VFIO compatibility ioctls.
const CMD_FIRST: u64 = 0x80;
const CMD_LAST: u64 = 0x95;

// SAFETY: #[repr(C)] structs of integers from the uAPI header, no padding.
unsafe impl Pod for IommuHwptAlloc {}
// SAFETY: as above.
unsafe impl Pod for IommuHwInfo {}

#[derive(Debug)]
enum Object {
    Ioas(Ioas),
    /// A paging HWPT over an IOAS; `auto` if attaching a device to the
    /// IOAS made it (it goes away with its last device).
    Hwpt {
        ioas: u32,
        auto: bool,
    },
    /// A bound device (kept alive while bound).
    Device {
        dev: Arc<EmuDevice>,
    },
    /// A device another process bound to this iommufd (shared runs): the
    /// run's served device at `index`, bound by process `pid`.
    PeerDevice {
        index: usize,
        pid: u32,
    },
}

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<u32, Object>,
    /// Device id -> the HWPT it is attached to.
    attached: HashMap<u32, u32>,
    /// The IOAS of the VFIO compatibility mode.
    compat: Option<u32>,
    /// The IOMMU type set through the compatibility mode.
    compat_type: Option<u64>,
    /// What other processes holding this iommufd mapped (shared runs).
    peer_maps: Vec<RecMap>,
    /// Devices that other processes attached to an IOAS, attached here to
    /// this process's table of it too (IOAS id -> devices), so that this
    /// process's maps and unmaps reach them over its own connections.
    shadows: HashMap<u32, Vec<(Arc<EmuDevice>, Ioas)>>,
    /// The record as this process last wrote it.
    last: Option<Record>,
}

/// One open `/dev/iommu`.
///
/// Under `barmap run --shared` (`--server`) the open file is shared by
/// every process that holds an fd of it (inherited across fork or exec,
/// received over a Unix socket), and so is the iommufd: its memfd holds a
/// [`Record`] of its objects, of the devices bound and attached in each
/// process and of every process's mappings; each process keeps its own
/// tables of its own mappings (its memory is its own) and, around every
/// command, takes the record's lock, brings its objects up to the record,
/// and writes the record back. A map goes to every device attached to the
/// IOAS in any process (over this process's connection to its server,
/// with this process's memory); an unmap of another process's mapping
/// unmaps that window at the devices' server. Outside shared runs the
/// iommufd is this process's alone.
#[derive(Debug, Default)]
pub struct Iommufd {
    state: Mutex<State>,
    /// Serialises this process's commands on a shared iommufd (the
    /// record's lock excludes other processes only).
    txn: Mutex<()>,
}

/// An object of a shared iommufd's record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RecObj {
    /// An IOAS.
    Ioas,
    /// A paging HWPT over IOAS `ioas`.
    Hwpt {
        /// Its IOAS.
        ioas: u32,
        /// Made by an attach to the IOAS.
        auto: bool,
    },
    /// The run's served device at `index`, bound by process `pid`.
    Device {
        /// Position of the device in the run.
        index: usize,
        /// The binding process.
        pid: u32,
    },
}

/// A mapping of a shared iommufd's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecMap {
    /// The IOAS.
    pub ioas: u32,
    /// First IOVA.
    pub iova: u64,
    /// Length.
    pub size: u64,
    /// The process whose memory it maps.
    pub pid: u32,
}

/// What every process holding a shared iommufd sees of it (JSON in its
/// memfd).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// Object id -> object.
    pub objects: BTreeMap<u32, RecObj>,
    /// Device id -> the HWPT it is attached to.
    pub attached: BTreeMap<u32, u32>,
    /// The IOAS of the VFIO compatibility mode.
    pub compat: Option<u32>,
    /// Every process's mappings.
    pub maps: Vec<RecMap>,
}

fn errno_of(e: DmaError) -> Errno {
    match e {
        DmaError::Invalid => Errno::EINVAL,
        DmaError::Exists => Errno::EEXIST,
        DmaError::NotFound => Errno::ENOENT,
        DmaError::Overflow => Errno::EOVERFLOW,
        DmaError::Fault => Errno::EFAULT,
        DmaError::Device(e) => Errno(e),
    }
}

/// Reads a command as `iommufd_fops_ioctl` does, after the size (read by
/// the caller): at least `min` bytes (EINVAL), then
/// `copy_struct_from_user`: what the user passes beyond `T` must be zero
/// (E2BIG). Returns the command and the user's size.
pub(crate) fn read_cmd<T: Pod>(arg: usize, size: u32, min: usize) -> Result<T, Errno> {
    let size = size as usize;
    if size < min {
        return Err(Errno::EINVAL);
    }
    let known = std::mem::size_of::<T>();
    if size > known {
        // The tail is checked a page at a time at most, as the kernel's
        // check_zeroed_user does.
        let mut at = known;
        while at < size {
            let n = (size - at).min(4096);
            if user::read(arg + at, n)?.iter().any(|&b| b != 0) {
                return Err(Errno(libc::E2BIG));
            }
            at += n;
        }
    }
    user::read_struct(arg, size.min(known))
}

/// `iommufd_ucmd_respond`: the command back, as much as the user passed.
fn respond<T: Pod>(arg: usize, cmd: &T, size: u32) -> Result<(), Errno> {
    user::write_struct(arg, cmd, size as usize)
}

/// Whether the process memory `vaddr..vaddr+len` can be pinned for DMA
/// (`pin_user_pages` with `FOLL_LONGTERM`, and `FOLL_WRITE` for a writable
/// map): every page in a mapping that is readable, and writable for
/// `write`, and none of it a BAR mapping (VM_IO/VM_PFNMAP on the kernel).
pub fn pinnable(vaddr: u64, len: u64, write: bool) -> bool {
    if crate::is_bar_memory(vaddr, len) {
        return false;
    }
    let Some(end) = vaddr.checked_add(len) else {
        return false;
    };
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return false;
    };
    let mut vmas: Vec<(u64, u64, bool, bool)> = maps
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (lo, hi) = it.next()?.split_once('-')?;
            let perms = it.next()?.as_bytes();
            Some((
                u64::from_str_radix(lo, 16).ok()?,
                u64::from_str_radix(hi, 16).ok()?,
                perms.first() == Some(&b'r'),
                perms.get(1) == Some(&b'w'),
            ))
        })
        .collect();
    vmas.sort_unstable();
    let mut at = vaddr;
    for (lo, hi, r, w) in vmas {
        if at >= end {
            break;
        }
        if hi <= at {
            continue;
        }
        if lo > at || !r || (write && !w) {
            return false;
        }
        at = hi;
    }
    at >= end
}

/// Pins every mapping of `table`, if each can be pinned (a domain is
/// being added to the IOAS: `iopt_table_add_domain` fills it); false,
/// with nothing pinned, if one cannot.
fn table_pinnable(table: &Ioas) -> bool {
    let mut t = table.lock().unwrap();
    t.mappings()
        .iter()
        .all(|m| pinnable(m.vaddr, m.size, m.write))
        && t.pin_deferred().is_ok()
}

/// Detaches `d`, attached here to `table` because another process
/// attached it to that IOAS, unless it has been attached elsewhere since.
fn detach_shadow(d: &Arc<EmuDevice>, table: &Ioas) {
    let current = d.dma.lock().unwrap().clone();
    if current.is_some_and(|t| Arc::ptr_eq(&t, table)) {
        d.attach(None);
    }
}

impl Drop for Iommufd {
    /// This process's last fd of the iommufd is closed (and no device
    /// here is bound to it): the devices attached here only because other
    /// processes attached them let go of this process's mappings, so that
    /// a device the other processes release later keeps no window of this
    /// process's memory.
    fn drop(&mut self) {
        let s = self.state.get_mut().unwrap();
        for (d, t) in s.shadows.drain().flat_map(|(_, v)| v) {
            detach_shadow(&d, &t);
        }
    }
}

/// `IOMMU_IOAS_UNMAP` over this process's table `t` and the mappings of
/// other processes (`peers`, of this IOAS; `peer_maps` loses those
/// unmapped): the same walk in IOVA order as for one process's table; a
/// peer's mapping is unmapped at the devices attached, whichever process
/// mapped it.
fn unmap_with_peers(
    t: &mut DmaTable,
    peer_maps: &mut Vec<RecMap>,
    u: &ifd::IommuIoasUnmap,
    peers: &[(u64, u64)],
) -> Result<u64, Errno> {
    let all = u.iova == 0 && u.length == u64::MAX;
    let last = if all {
        u64::MAX
    } else {
        if u.iova == u64::MAX || u.length == u64::MAX {
            return Err(Errno::EOVERFLOW);
        }
        if u.length == 0 {
            return Err(Errno::EINVAL);
        }
        u.iova.checked_add(u.length - 1).ok_or(Errno::EOVERFLOW)?
    };
    // (iova, size, this process's own)
    let mut areas: Vec<(u64, u64, bool)> = t
        .mappings()
        .into_iter()
        .map(|m| (m.iova, m.size, true))
        .chain(peers.iter().map(|&(i, n)| (i, n, false)))
        .filter(|&(i, n, _)| i <= last && u.iova <= i + (n - 1))
        .collect();
    areas.sort_by_key(|a| a.0);
    let mut bytes = 0;
    for (i, n, own) in areas {
        if !all && (i < u.iova || i + (n - 1) > last) {
            return Err(Errno::ENOENT);
        }
        if own {
            bytes += t.unmap(i, n, true).map_err(errno_of)?;
        } else {
            t.unmap_peer(i, n);
            peer_maps.retain(|m| !(m.iova == i && m.size == n && m.ioas == u.ioas_id));
            bytes += n;
        }
    }
    if bytes == 0 && !all {
        return Err(Errno::ENOENT);
    }
    Ok(bytes)
}

impl State {
    /// The lowest free object id (the kernel's `xa_alloc` from 1).
    fn alloc(&mut self, obj: Object) -> u32 {
        let mut id = 1;
        for &k in self.objects.keys() {
            if k != id {
                break;
            }
            id += 1;
        }
        self.objects.insert(id, obj);
        id
    }

    fn ioas(&self, id: u32) -> Result<Ioas, Errno> {
        match self.objects.get(&id) {
            Some(Object::Ioas(t)) => Ok(t.clone()),
            _ => Err(Errno::ENOENT),
        }
    }

    fn is_device(&self, id: u32) -> bool {
        matches!(
            self.objects.get(&id),
            Some(Object::Device { .. } | Object::PeerDevice { .. })
        )
    }

    /// What other processes mapped in IOAS `ioas`, as (IOVA, size).
    fn peer_ranges(&self, ioas: u32) -> Vec<(u64, u64)> {
        self.peer_maps
            .iter()
            .filter(|m| m.ioas == ioas)
            .map(|m| (m.iova, m.size))
            .collect()
    }

    /// Whether the IOAS `id` has a domain (a HWPT over it).
    fn has_domain(&self, id: u32) -> bool {
        self.objects
            .values()
            .any(|o| matches!(o, Object::Hwpt { ioas, .. } if *ioas == id))
    }

    /// Whether a device is attached to HWPT `id`.
    fn hwpt_in_use(&self, id: u32) -> bool {
        self.attached.values().any(|&h| h == id)
    }

    /// Drops HWPT `id` if it is automatic and no device uses it any more
    /// (`iommufd_hw_pagetable_put`).
    fn put_hwpt(&mut self, id: u32) {
        if matches!(self.objects.get(&id), Some(Object::Hwpt { auto: true, .. }))
            && !self.hwpt_in_use(id)
        {
            self.objects.remove(&id);
        }
    }

    fn existing_compat(&self) -> Option<Ioas> {
        self.compat.and_then(|id| self.ioas(id).ok())
    }

    fn compat_ioas(&mut self) -> Ioas {
        if let Some(id) = self.compat {
            if let Ok(t) = self.ioas(id) {
                return t;
            }
        }
        let t: Ioas = Arc::default();
        let id = self.alloc(Object::Ioas(t.clone()));
        self.compat = Some(id);
        t
    }
}

impl Iommufd {
    /// Runs `f`, a command on this iommufd (an ioctl on it, or a device's
    /// bind, attach, detach or unbind), as one step of the iommufd that
    /// every process holding its open file shares, when the run's devices
    /// are served: under the record's lock, with this process's objects
    /// brought up to the record first and the record written back after.
    /// `fd` names the iommufd here (None: any fd of this process that
    /// does). Otherwise, or with no such fd, just `f`.
    pub fn shared<R>(&self, fd: Option<i32>, f: impl FnOnce() -> R) -> R {
        let Some(front) = crate::Front::get().filter(|fr| fr.shares_files()) else {
            return f();
        };
        let Some(fd) = fd.or_else(|| front.iommufd_fd(self)) else {
            return f();
        };
        let _txn = self.txn.lock().unwrap();
        let _lock = crate::shared_state::FileLock::new(fd);
        let rec: Record =
            serde_json::from_slice(&crate::shared_state::read_all(fd)).unwrap_or_default();
        self.sync_in(front, &rec);
        let r = f();
        let out = self.record(front);
        if out != rec {
            if let Ok(bytes) = serde_json::to_vec(&out) {
                crate::shared_state::write_all(fd, &bytes);
            }
        }
        self.state.lock().unwrap().last = Some(out);
        r
    }

    /// Brings this process's objects up to the record `rec` that the
    /// processes sharing the iommufd wrote: objects made or destroyed
    /// elsewhere, devices bound and attached elsewhere (each attached here
    /// too to this process's table of its IOAS, so that this process's
    /// maps reach it), this process's mappings that another process
    /// unmapped, and the other processes' mappings.
    fn sync_in(&self, front: &crate::Front, rec: &Record) {
        let me = crate::fdtable::getpid_raw();
        let mut s = self.state.lock().unwrap();
        let last = s.last.take().unwrap_or_default();
        // Objects another process destroyed (known to the record before).
        let gone: Vec<u32> = s
            .objects
            .keys()
            .copied()
            .filter(|id| last.objects.contains_key(id) && !rec.objects.contains_key(id))
            .collect();
        for id in gone {
            if let Some(Object::Ioas(t)) = s.objects.remove(&id) {
                t.lock().unwrap().clear();
            }
        }
        for (&id, o) in &rec.objects {
            if s.objects.contains_key(&id) {
                continue;
            }
            let obj = match *o {
                RecObj::Ioas => Object::Ioas(Arc::default()),
                RecObj::Hwpt { ioas, auto } => Object::Hwpt { ioas, auto },
                // A device of ours that is no longer here: stale.
                RecObj::Device { pid, .. } if pid == me => continue,
                RecObj::Device { index, pid } => Object::PeerDevice { index, pid },
            };
            s.objects.insert(id, obj);
        }
        let known: Vec<u32> = s.objects.keys().copied().collect();
        s.attached
            .retain(|d, h| known.contains(d) && known.contains(h));
        // The compatibility IOAS as another process set it, if one did.
        if rec.compat != last.compat {
            s.compat = rec.compat.filter(|id| s.objects.contains_key(id));
        }
        // Other processes' attachments, as the record has them.
        let peers: Vec<u32> = s
            .objects
            .iter()
            .filter(|(_, o)| matches!(o, Object::PeerDevice { .. }))
            .map(|(id, _)| *id)
            .collect();
        for id in &peers {
            match rec.attached.get(id) {
                Some(&h) => s.attached.insert(*id, h),
                None => s.attached.remove(id),
            };
        }
        // This process's mappings that another process unmapped (the
        // window at the server went with that unmap).
        let mine = |ioas: u32, iova: u64| {
            rec.maps
                .iter()
                .any(|m| m.pid == me && m.ioas == ioas && m.iova == iova)
        };
        let was_mine = |ioas: u32, iova: u64| {
            last.maps
                .iter()
                .any(|m| m.pid == me && m.ioas == ioas && m.iova == iova)
        };
        for (&id, o) in &s.objects {
            if let Object::Ioas(t) = o {
                let mut t = t.lock().unwrap();
                for m in t.mappings() {
                    if was_mine(id, m.iova) && !mine(id, m.iova) {
                        let _ = t.unmap(m.iova, m.size, true);
                    }
                }
            }
        }
        s.peer_maps = rec.maps.iter().filter(|m| m.pid != me).copied().collect();
        // Devices attached elsewhere, attached here to the IOAS's table.
        let local: Vec<usize> = s
            .objects
            .values()
            .filter_map(|o| match o {
                Object::Device { dev } => front.served_index(dev),
                _ => None,
            })
            .collect();
        let mut wanted: HashMap<u32, Vec<usize>> = HashMap::new();
        for id in &peers {
            let (Some(Object::PeerDevice { index, .. }), Some(h)) =
                (s.objects.get(id), s.attached.get(id))
            else {
                continue;
            };
            if let Some(Object::Hwpt { ioas, .. }) = s.objects.get(h) {
                if !local.contains(index) {
                    wanted.entry(*ioas).or_default().push(*index);
                }
            }
        }
        let old = std::mem::take(&mut s.shadows);
        for (ioas, devs) in old {
            for (d, t) in devs {
                let keep = wanted
                    .get(&ioas)
                    .is_some_and(|w| front.served_index(&d).is_some_and(|i| w.contains(&i)));
                if keep {
                    s.shadows.entry(ioas).or_default().push((d, t));
                } else {
                    detach_shadow(&d, &t);
                }
            }
        }
        for (ioas, indexes) in wanted {
            let Ok(table) = s.ioas(ioas) else { continue };
            for i in indexes {
                let have = s
                    .shadows
                    .get(&ioas)
                    .is_some_and(|v| v.iter().any(|(d, _)| front.served_index(d) == Some(i)));
                if have {
                    continue;
                }
                if let Ok(d) = front.device(i) {
                    d.attach(Some(table.clone()));
                    s.shadows.entry(ioas).or_default().push((d, table.clone()));
                }
            }
        }
    }

    /// The record of this process's view: its objects and attachments,
    /// its own mappings and the other processes' it knows.
    fn record(&self, front: &crate::Front) -> Record {
        let me = crate::fdtable::getpid_raw();
        let s = self.state.lock().unwrap();
        let mut rec = Record {
            compat: s.compat,
            attached: s.attached.iter().map(|(&d, &h)| (d, h)).collect(),
            ..Record::default()
        };
        for (&id, o) in &s.objects {
            let r = match o {
                Object::Ioas(t) => {
                    for m in t.lock().unwrap().mappings() {
                        rec.maps.push(RecMap {
                            ioas: id,
                            iova: m.iova,
                            size: m.size,
                            pid: me,
                        });
                    }
                    RecObj::Ioas
                }
                Object::Hwpt { ioas, auto } => RecObj::Hwpt {
                    ioas: *ioas,
                    auto: *auto,
                },
                Object::Device { dev } => RecObj::Device {
                    index: front.served_index(dev).unwrap_or(usize::MAX),
                    pid: me,
                },
                Object::PeerDevice { index, pid } => RecObj::Device {
                    index: *index,
                    pid: *pid,
                },
            };
            rec.objects.insert(id, r);
        }
        rec.maps.extend(s.peer_maps.iter().copied());
        rec.maps.sort_by_key(|m| (m.ioas, m.iova));
        rec
    }

    /// Binds `dev` (`VFIO_DEVICE_BIND_IOMMUFD`); returns its device id.
    pub fn bind(&self, dev: &Arc<EmuDevice>) -> u32 {
        self.state
            .lock()
            .unwrap()
            .alloc(Object::Device { dev: dev.clone() })
    }

    /// Unbinds device `devid` (its fd closed): detaches it first.
    pub fn unbind(&self, devid: u32) {
        let mut s = self.state.lock().unwrap();
        if let Some(h) = s.attached.remove(&devid) {
            s.put_hwpt(h);
        }
        s.objects.remove(&devid);
    }

    /// Attaches device `devid` to `pt_id`, or replaces its attachment if
    /// it has one (`VFIO_DEVICE_ATTACH_IOMMUFD_PT`: `iommufd_device_attach`
    /// or `iommufd_device_replace`). `pt_id` names a HWPT, or an IOAS:
    /// then the IOAS's automatic HWPT is used, made if there is none.
    /// Returns the IOAS table that the device now translates through and
    /// the HWPT id (what the kernel writes back to `pt_id`).
    pub fn attach(&self, devid: u32, pt_id: u32) -> Result<(Ioas, u32), Errno> {
        let mut s = self.state.lock().unwrap();
        let hwpt = match s.objects.get(&pt_id) {
            None => return Err(Errno::ENOENT),
            Some(Object::Hwpt { .. }) => pt_id,
            Some(Object::Ioas(table)) => {
                let existing = s.objects.iter().find_map(|(&id, o)| match o {
                    Object::Hwpt { ioas, auto: true } if *ioas == pt_id => Some(id),
                    _ => None,
                });
                match existing {
                    Some(id) => id,
                    None => {
                        // iommufd_hwpt_paging_alloc + iopt_table_add_domain.
                        if !table_pinnable(table) {
                            return Err(Errno::EFAULT);
                        }
                        s.alloc(Object::Hwpt {
                            ioas: pt_id,
                            auto: true,
                        })
                    }
                }
            }
            Some(Object::Device { .. } | Object::PeerDevice { .. }) => return Err(Errno::EINVAL),
        };
        let Some(Object::Hwpt { ioas, .. }) = s.objects.get(&hwpt) else {
            unreachable!("a HWPT id names a HWPT");
        };
        let table = s.ioas(*ioas)?;
        if let Some(old) = s.attached.insert(devid, hwpt) {
            if old != hwpt {
                s.put_hwpt(old);
            }
        }
        Ok((table, hwpt))
    }

    /// Detaches device `devid` (`VFIO_DEVICE_DETACH_IOMMUFD_PT`; nothing
    /// if it is not attached).
    pub fn detach(&self, devid: u32) {
        let mut s = self.state.lock().unwrap();
        if let Some(h) = s.attached.remove(&devid) {
            s.put_hwpt(h);
        }
    }

    /// The compatibility IOAS that a group set to this iommufd as its
    /// container uses (created on first use).
    pub fn compat_ioas(&self) -> Ioas {
        self.state.lock().unwrap().compat_ioas()
    }

    fn existing_compat(&self) -> Result<Ioas, Errno> {
        self.state
            .lock()
            .unwrap()
            .existing_compat()
            .ok_or(Errno::ENODEV)
    }

    /// Whether the compatibility mode has an IOMMU type set.
    pub fn compat_type(&self) -> Option<u64> {
        self.state.lock().unwrap().compat_type
    }

    /// Serves an ioctl on the iommufd; ENOTTY for what it does not know.
    pub fn ioctl(&self, req: u64, arg: usize) -> Result<i64, Errno> {
        let nr = req & 0xff;
        if (CMD_FIRST..=CMD_LAST).contains(&nr) {
            let size = user::read_u32(arg)?;
            return match req as libc::c_ulong {
                ifd::IOMMU_DESTROY => self.destroy(arg, size),
                ifd::IOMMU_IOAS_ALLOC => self.ioas_alloc(arg, size),
                ifd::IOMMU_IOAS_MAP => self.ioas_map(arg, size),
                ifd::IOMMU_IOAS_UNMAP => self.ioas_unmap(arg, size),
                ifd::IOMMU_IOAS_IOVA_RANGES => self.iova_ranges(arg, size),
                ifd::IOMMU_OPTION => self.option(arg, size),
                ifd::IOMMU_VFIO_IOAS => self.vfio_ioas(arg, size),
                IOMMU_HWPT_ALLOC => self.hwpt_alloc(arg, size),
                IOMMU_GET_HW_INFO => self.hw_info(arg, size),
                _ => Err(Errno::ENOTTY),
            };
        }
        match req as libc::c_ulong {
            v::VFIO_GET_API_VERSION => Ok(i64::from(v::VFIO_API_VERSION)),
            v::VFIO_CHECK_EXTENSION => Ok(i64::from(
                arg as u64 == v::VFIO_TYPE1_IOMMU
                    || arg as u64 == v::VFIO_TYPE1V2_IOMMU
                    || arg as u64 == v::VFIO_UNMAP_ALL,
            )),
            // The type1 compatibility ioctls need the compatibility IOAS,
            // which a group's SET_CONTAINER (or IOMMU_VFIO_IOAS) creates.
            v::VFIO_SET_IOMMU => {
                let t = arg as u64;
                let mut s = self.state.lock().unwrap();
                s.existing_compat().ok_or(Errno::ENODEV)?;
                if t != v::VFIO_TYPE1_IOMMU && t != v::VFIO_TYPE1V2_IOMMU {
                    return Err(Errno::EINVAL);
                }
                s.compat_type = Some(t);
                Ok(0)
            }
            v::VFIO_IOMMU_GET_INFO => type1::get_info(&self.existing_compat()?, arg),
            v::VFIO_IOMMU_MAP_DMA => type1::map_dma(&self.existing_compat()?, arg, false),
            v::VFIO_IOMMU_UNMAP_DMA => type1::unmap_dma(&self.existing_compat()?, arg, true),
            _ => Err(Errno::ENOTTY),
        }
    }

    /// `IOMMU_DESTROY` (`iommufd_object_remove`): EBUSY while anything
    /// holds the object (a device attached to a HWPT, a HWPT over an IOAS,
    /// a device bound: it goes with its fd).
    fn destroy(&self, arg: usize, size: u32) -> Result<i64, Errno> {
        let d: ifd::IommuDestroy = read_cmd(arg, size, 8)?;
        let mut s = self.state.lock().unwrap();
        let busy = match s.objects.get(&d.id) {
            None => return Err(Errno::ENOENT),
            Some(Object::Ioas(_)) => s.has_domain(d.id),
            Some(Object::Hwpt { .. }) => s.hwpt_in_use(d.id),
            Some(Object::Device { .. } | Object::PeerDevice { .. }) => true,
        };
        if busy {
            return Err(Errno::EBUSY);
        }
        s.objects.remove(&d.id);
        // The IOAS's mappings go with it, other processes' too.
        s.peer_maps.retain(|m| m.ioas != d.id);
        if s.compat == Some(d.id) {
            s.compat = None;
        }
        Ok(0)
    }

    /// `IOMMU_HWPT_ALLOC` (`iommufd_hwpt_alloc`): a paging HWPT over an
    /// IOAS, for a bound device.
    fn hwpt_alloc(&self, arg: usize, size: u32) -> Result<i64, Errno> {
        let mut c: IommuHwptAlloc = read_cmd(arg, size, 24)?;
        if c.__reserved != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        if (c.data_type == 0) != (c.data_len == 0) {
            return Err(Errno::EINVAL);
        }
        let mut s = self.state.lock().unwrap();
        if !s.is_device(c.dev_id) {
            return Err(Errno::ENOENT);
        }
        match s.objects.get(&c.pt_id) {
            // iommufd_get_object fails: EINVAL here (not ENOENT).
            None => return Err(Errno::EINVAL),
            Some(Object::Ioas(table)) => {
                // iommufd_hwpt_paging_alloc: a driver without
                // domain_alloc_paging_flags takes no flags and no data.
                if c.flags != 0 || c.data_len != 0 {
                    return Err(Errno::EOPNOTSUPP);
                }
                if !table_pinnable(table) {
                    return Err(Errno::EFAULT);
                }
            }
            // iommufd_hwpt_nested_alloc: the driver cannot nest.
            Some(Object::Hwpt { .. }) => return Err(Errno::EOPNOTSUPP),
            Some(Object::Device { .. } | Object::PeerDevice { .. }) => return Err(Errno::EINVAL),
        }
        let id = s.alloc(Object::Hwpt {
            ioas: c.pt_id,
            auto: false,
        });
        c.out_hwpt_id = id;
        if let Err(e) = respond(arg, &c, size) {
            s.objects.remove(&id);
            return Err(e);
        }
        Ok(0)
    }

    /// `IOMMU_GET_HW_INFO` (`iommufd_get_hw_info`) for a driver without a
    /// `hw_info` op: type NONE, no data (the user's buffer is zeroed), no
    /// dirty tracking, no PASID, no ATS.
    fn hw_info(&self, arg: usize, size: u32) -> Result<i64, Errno> {
        let mut c: IommuHwInfo = read_cmd(arg, size, 32)?;
        if c.flags & !IOMMU_HW_INFO_FLAG_INPUT_TYPE != 0 || c.__reserved != [0; 3] {
            return Err(Errno::EOPNOTSUPP);
        }
        if !self.state.lock().unwrap().is_device(c.dev_id) {
            return Err(Errno::ENOENT);
        }
        c.__bindgen_anon_1.out_data_type = 0;
        // clear_user of the whole buffer, a page at a time.
        let zeros = [0u8; 4096];
        let mut at = 0usize;
        while at < c.data_len as usize {
            let n = (c.data_len as usize - at).min(zeros.len());
            user::write((c.data_uptr as usize).wrapping_add(at), &zeros[..n])?;
            at += n;
        }
        c.data_len = 0;
        c.out_capabilities = IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED;
        c.out_max_pasid_log2 = 0;
        respond(arg, &c, size)?;
        Ok(0)
    }

    fn ioas_alloc(&self, arg: usize, size: u32) -> Result<i64, Errno> {
        let mut a: ifd::IommuIoasAlloc = read_cmd(arg, size, 12)?;
        if a.flags != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let mut s = self.state.lock().unwrap();
        let id = s.alloc(Object::Ioas(Arc::default()));
        a.out_ioas_id = id;
        if let Err(e) = respond(arg, &a, size) {
            s.objects.remove(&id);
            return Err(e);
        }
        Ok(0)
    }

    /// `IOMMU_IOAS_MAP` (`iommufd_ioas_map`, `iopt_map_user_pages`), in
    /// the kernel's order: flags, overflow, permissions, the IOAS, the
    /// range, the IOVA, then pinning when the IOAS has a domain.
    fn ioas_map(&self, arg: usize, size: u32) -> Result<i64, Errno> {
        let mut m: ifd::IommuIoasMap = read_cmd(arg, size, 40)?;
        let known = ifd::IOMMU_IOAS_MAP_FIXED_IOVA
            | ifd::IOMMU_IOAS_MAP_WRITEABLE
            | ifd::IOMMU_IOAS_MAP_READABLE;
        if m.flags & !known != 0 || m.__reserved != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        if m.iova == u64::MAX || m.length == u64::MAX {
            return Err(Errno::EOVERFLOW);
        }
        if m.flags & (ifd::IOMMU_IOAS_MAP_WRITEABLE | ifd::IOMMU_IOAS_MAP_READABLE) == 0 {
            return Err(Errno::EINVAL);
        }
        let s = self.state.lock().unwrap();
        let table = s.ioas(m.ioas_id)?;
        let domain = s.has_domain(m.ioas_id);
        // iopt_alloc_user_pages, iopt_alloc_pages.
        if m.user_va.checked_add(m.length).is_none() {
            return Err(Errno::EOVERFLOW);
        }
        if m.length == 0 {
            return Err(Errno::EINVAL);
        }
        let write = m.flags & ifd::IOMMU_IOAS_MAP_WRITEABLE != 0;
        let mut t = table.lock().unwrap();
        if m.flags & ifd::IOMMU_IOAS_MAP_FIXED_IOVA == 0 {
            // iopt_alloc_iova.
            if m.length >= u64::MAX / 2 {
                return Err(Errno::EOVERFLOW);
            }
            m.iova = t
                .find_free_besides(
                    m.length.next_multiple_of(IOMMU_PAGE),
                    IOMMU_PAGE,
                    &s.peer_ranges(m.ioas_id),
                )
                .ok_or(Errno::ENOSPC)?;
        }
        // Another process's mapping there (its memory, not in this table).
        let end = m.iova.saturating_add(m.length);
        if s.peer_ranges(m.ioas_id)
            .iter()
            .any(|&(i, n)| i < end && m.iova < i.saturating_add(n))
        {
            return Err(Errno::EEXIST);
        }
        let mapping = DmaMapping {
            iova: m.iova,
            size: m.length,
            vaddr: m.user_va,
            read: m.flags & ifd::IOMMU_IOAS_MAP_READABLE != 0,
            write,
        };
        // iopt_fill_domains_pages: only a domain pins (and never a BAR).
        if domain {
            if !pinnable(m.user_va, m.length, write) {
                return Err(Errno::EFAULT);
            }
            t.map(mapping).map_err(errno_of)?;
        } else {
            t.map_deferred(mapping).map_err(errno_of)?;
        }
        if let Err(e) = respond(arg, &m, size) {
            let _ = t.unmap(m.iova, m.length, true);
            return Err(e);
        }
        Ok(0)
    }

    /// `IOMMU_IOAS_UNMAP` (`iommufd_ioas_unmap`, `iopt_unmap_iova_range`):
    /// the range must cover whole areas. The kernel walks the areas in
    /// IOVA order and unmaps each one the range covers; at the first area
    /// that reaches outside the range it stops with ENOENT (the areas
    /// before it stay unmapped); no area at all is ENOENT too.
    fn ioas_unmap(&self, arg: usize, size: u32) -> Result<i64, Errno> {
        let mut u: ifd::IommuIoasUnmap = read_cmd(arg, size, 24)?;
        let mut s = self.state.lock().unwrap();
        let table = s.ioas(u.ioas_id)?;
        let mut t = table.lock().unwrap();
        let peers = s.peer_ranges(u.ioas_id);
        if !peers.is_empty() {
            // Other processes' mappings too (a shared iommufd).
            let bytes = unmap_with_peers(&mut t, &mut s.peer_maps, &u, &peers)?;
            u.length = bytes;
            drop(t);
            drop(s);
            respond(arg, &u, size)?;
            return Ok(0);
        }
        drop(s);
        let bytes = if u.iova == 0 && u.length == u64::MAX {
            t.clear()
        } else {
            if u.iova == u64::MAX || u.length == u64::MAX {
                return Err(Errno::EOVERFLOW);
            }
            if u.length == 0 {
                return Err(Errno::EINVAL);
            }
            let last = u.iova.checked_add(u.length - 1).ok_or(Errno::EOVERFLOW)?;
            let mut areas: Vec<DmaMapping> = t
                .mappings()
                .into_iter()
                .filter(|m| m.iova <= last && u.iova <= m.iova + (m.size - 1))
                .collect();
            areas.sort_by_key(|m| m.iova);
            let mut bytes = 0;
            for m in areas {
                if m.iova < u.iova || m.iova + (m.size - 1) > last {
                    return Err(Errno::ENOENT);
                }
                bytes += t.unmap(m.iova, m.size, true).map_err(errno_of)?;
            }
            if bytes == 0 {
                return Err(Errno::ENOENT);
            }
            bytes
        };
        u.length = bytes;
        drop(t);
        respond(arg, &u, size)?;
        Ok(0)
    }

    fn iova_ranges(&self, arg: usize, size: u32) -> Result<i64, Errno> {
        let mut r: ifd::IommuIoasIovaRanges = read_cmd(arg, size, 32)?;
        if r.__reserved != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        self.state.lock().unwrap().ioas(r.ioas_id)?;
        let room = r.num_iovas as usize;
        r.num_iovas = IOVA_RANGES.len() as u32;
        r.out_iova_alignment = IOMMU_PAGE;
        for (i, (lo, hi)) in IOVA_RANGES.iter().enumerate().take(room) {
            let range = ifd::IommuIovaRange {
                start: *lo,
                last: *hi,
            };
            user::write_struct(r.allowed_iovas as usize + 16 * i, &range, 16)?;
        }
        respond(arg, &r, size)?;
        if room < IOVA_RANGES.len() {
            return Err(Errno::EMSGSIZE);
        }
        Ok(0)
    }

    fn option(&self, arg: usize, size: u32) -> Result<i64, Errno> {
        const VAL64: usize = 16;
        let mut o: ifd::IommuOption = read_cmd(arg, size, 24)?;
        if o.__reserved != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        match (o.option_id, o.op) {
            // RLIMIT_MODE (global) and HUGE_PAGES (per IOAS): accepted; a
            // get reads the default. The kernel writes back val64 only.
            (0, 0) => Ok(0),
            (1, 0) => {
                self.state.lock().unwrap().ioas(o.object_id)?;
                if o.val64 > 1 {
                    return Err(Errno::EINVAL);
                }
                Ok(0)
            }
            (0, 1) => {
                o.val64 = 0;
                user::write(arg + VAL64, &o.val64.to_ne_bytes())?;
                Ok(0)
            }
            (1, 1) => {
                self.state.lock().unwrap().ioas(o.object_id)?;
                o.val64 = 1;
                user::write(arg + VAL64, &o.val64.to_ne_bytes())?;
                Ok(0)
            }
            (1, _) => {
                self.state.lock().unwrap().ioas(o.object_id)?;
                Err(Errno::EOPNOTSUPP)
            }
            _ => Err(Errno::EOPNOTSUPP),
        }
    }

    fn vfio_ioas(&self, arg: usize, size: u32) -> Result<i64, Errno> {
        let mut c: ifd::IommuVfioIoas = read_cmd(arg, size, 12)?;
        if c.__reserved != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let mut s = self.state.lock().unwrap();
        match c.op {
            0 => {
                s.compat_ioas();
                c.ioas_id = s.compat.unwrap_or(0);
                drop(s);
                respond(arg, &c, size)?;
                Ok(0)
            }
            1 => {
                s.ioas(c.ioas_id)?;
                s.compat = Some(c.ioas_id);
                Ok(0)
            }
            2 => {
                s.compat = None;
                Ok(0)
            }
            _ => Err(Errno::EOPNOTSUPP),
        }
    }
}
