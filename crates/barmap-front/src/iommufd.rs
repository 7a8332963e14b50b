//! `/dev/iommu`: IOAS objects (`IOMMU_IOAS_ALLOC`, `MAP`, `UNMAP`,
//! `IOVA_RANGES`, `IOMMU_DESTROY`), device binding for the vfio cdev, and
//! the VFIO type1 compatibility mode (the type1 ioctls on an iommufd).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use barmap_vfio::iommufd as ifd;
use barmap_vfio::uapi as v;

use crate::device::EmuDevice;
use crate::dma::{DmaError, DmaMapping, DmaTable, IOMMU_PAGE, IOVA_RANGES};
use crate::{type1, user, Errno};

/// An IOAS.
pub type Ioas = Arc<Mutex<DmaTable>>;

#[derive(Debug)]
enum Object {
    Ioas(Ioas),
    /// A bound device (kept alive while bound).
    Device {
        _dev: Arc<EmuDevice>,
    },
}

#[derive(Debug, Default)]
struct State {
    next_id: u32,
    objects: HashMap<u32, Object>,
    /// Device id -> the IOAS id it is attached to.
    attached: HashMap<u32, u32>,
    /// The IOAS of the VFIO compatibility mode.
    compat: Option<u32>,
    /// The IOMMU type set through the compatibility mode.
    compat_type: Option<u64>,
}

/// One open `/dev/iommu`.
#[derive(Debug, Default)]
pub struct Iommufd {
    state: Mutex<State>,
}

fn errno_of(e: DmaError) -> Errno {
    match e {
        DmaError::Invalid => Errno::EINVAL,
        DmaError::Exists => Errno::EEXIST,
        DmaError::NotFound => Errno::ENOENT,
        DmaError::Overflow => Errno::EOVERFLOW,
        DmaError::Fault => Errno::EFAULT,
    }
}

impl State {
    fn alloc(&mut self, obj: Object) -> u32 {
        self.next_id += 1;
        self.objects.insert(self.next_id, obj);
        self.next_id
    }

    fn ioas(&self, id: u32) -> Result<Ioas, Errno> {
        match self.objects.get(&id) {
            Some(Object::Ioas(t)) => Ok(t.clone()),
            _ => Err(Errno::ENOENT),
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
    /// Binds `dev` (`VFIO_DEVICE_BIND_IOMMUFD`); returns its device id.
    pub fn bind(&self, dev: &Arc<EmuDevice>) -> u32 {
        self.state
            .lock()
            .unwrap()
            .alloc(Object::Device { _dev: dev.clone() })
    }

    /// Unbinds device `devid` (its fd closed).
    pub fn unbind(&self, devid: u32) {
        let mut s = self.state.lock().unwrap();
        s.objects.remove(&devid);
        s.attached.remove(&devid);
    }

    /// Attaches device `devid` to `pt_id` (an IOAS): returns its table.
    pub fn attach(&self, devid: u32, pt_id: u32) -> Result<Ioas, Errno> {
        let mut s = self.state.lock().unwrap();
        let t = s.ioas(pt_id)?;
        s.attached.insert(devid, pt_id);
        Ok(t)
    }

    /// Detaches device `devid`.
    pub fn detach(&self, devid: u32) {
        self.state.lock().unwrap().attached.remove(&devid);
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
        match req as libc::c_ulong {
            ifd::IOMMU_DESTROY => self.destroy(arg),
            ifd::IOMMU_IOAS_ALLOC => self.ioas_alloc(arg),
            ifd::IOMMU_IOAS_MAP => self.ioas_map(arg),
            ifd::IOMMU_IOAS_UNMAP => self.ioas_unmap(arg),
            ifd::IOMMU_IOAS_IOVA_RANGES => self.iova_ranges(arg),
            ifd::IOMMU_OPTION => self.option(arg),
            ifd::IOMMU_VFIO_IOAS => self.vfio_ioas(arg),
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

    fn destroy(&self, arg: usize) -> Result<i64, Errno> {
        let d: ifd::IommuDestroy = user::read_struct(arg, 8)?;
        if d.size < 8 {
            return Err(Errno::EINVAL);
        }
        let mut s = self.state.lock().unwrap();
        match s.objects.get(&d.id) {
            Some(Object::Ioas(_)) if s.attached.values().any(|&i| i == d.id) => Err(Errno::EBUSY),
            Some(Object::Ioas(_)) => {
                s.objects.remove(&d.id);
                if s.compat == Some(d.id) {
                    s.compat = None;
                }
                Ok(0)
            }
            // A bound device goes away with its fd, not with DESTROY.
            Some(Object::Device { .. }) => Err(Errno::EBUSY),
            None => Err(Errno::ENOENT),
        }
    }

    fn ioas_alloc(&self, arg: usize) -> Result<i64, Errno> {
        let mut a: ifd::IommuIoasAlloc = user::read_struct(arg, 12)?;
        if a.size < 12 {
            return Err(Errno::EINVAL);
        }
        if a.flags != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        a.out_ioas_id = self
            .state
            .lock()
            .unwrap()
            .alloc(Object::Ioas(Arc::default()));
        user::write_struct(arg, &a, 12)?;
        Ok(0)
    }

    fn ioas_map(&self, arg: usize) -> Result<i64, Errno> {
        const SIZE: usize = 40;
        let mut m: ifd::IommuIoasMap = user::read_struct(arg, SIZE)?;
        if (m.size as usize) < SIZE {
            return Err(Errno::EINVAL);
        }
        let known = ifd::IOMMU_IOAS_MAP_FIXED_IOVA
            | ifd::IOMMU_IOAS_MAP_WRITEABLE
            | ifd::IOMMU_IOAS_MAP_READABLE;
        if m.flags & !known != 0 || m.reserved != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        if m.flags & (ifd::IOMMU_IOAS_MAP_WRITEABLE | ifd::IOMMU_IOAS_MAP_READABLE) == 0 {
            return Err(Errno::EINVAL);
        }
        if m.length == 0 {
            return Err(Errno::EINVAL);
        }
        let table = self.state.lock().unwrap().ioas(m.ioas_id)?;
        if crate::is_bar_memory(m.user_va, m.length) {
            // iommufd pins pages; a BAR mapping has none to pin.
            return Err(Errno::EFAULT);
        }
        let mut t = table.lock().unwrap();
        if m.flags & ifd::IOMMU_IOAS_MAP_FIXED_IOVA == 0 {
            m.iova = t
                .find_free(m.length.next_multiple_of(IOMMU_PAGE), IOMMU_PAGE)
                .ok_or(Errno::ENOSPC)?;
        } else if m.iova.checked_add(m.length).is_none() {
            return Err(Errno::EOVERFLOW);
        }
        t.map(DmaMapping {
            iova: m.iova,
            size: m.length,
            vaddr: m.user_va,
            read: m.flags & ifd::IOMMU_IOAS_MAP_READABLE != 0,
            write: m.flags & ifd::IOMMU_IOAS_MAP_WRITEABLE != 0,
        })
        .map_err(errno_of)?;
        drop(t);
        user::write_struct(arg, &m, SIZE)?;
        Ok(0)
    }

    fn ioas_unmap(&self, arg: usize) -> Result<i64, Errno> {
        const SIZE: usize = 24;
        let mut u: ifd::IommuIoasUnmap = user::read_struct(arg, SIZE)?;
        if (u.size as usize) < SIZE {
            return Err(Errno::EINVAL);
        }
        let table = self.state.lock().unwrap().ioas(u.ioas_id)?;
        let mut t = table.lock().unwrap();
        let bytes = if u.iova == 0 && u.length == u64::MAX {
            t.clear()
        } else {
            if u.length == 0 {
                return Err(Errno::EINVAL);
            }
            if u.iova.checked_add(u.length).is_none() {
                return Err(Errno::EOVERFLOW);
            }
            let n = t.unmap(u.iova, u.length, true).map_err(errno_of)?;
            if n == 0 {
                return Err(Errno::ENOENT);
            }
            n
        };
        u.length = bytes;
        drop(t);
        user::write_struct(arg, &u, SIZE)?;
        Ok(0)
    }

    fn iova_ranges(&self, arg: usize) -> Result<i64, Errno> {
        const SIZE: usize = 32;
        let mut r: ifd::IommuIoasIovaRanges = user::read_struct(arg, SIZE)?;
        if (r.size as usize) < SIZE {
            return Err(Errno::EINVAL);
        }
        if r.reserved != 0 {
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
        user::write_struct(arg, &r, SIZE)?;
        if room < IOVA_RANGES.len() {
            return Err(Errno::EMSGSIZE);
        }
        Ok(0)
    }

    fn option(&self, arg: usize) -> Result<i64, Errno> {
        const SIZE: usize = 24;
        let mut o: ifd::IommuOption = user::read_struct(arg, SIZE)?;
        if (o.size as usize) < SIZE || o.reserved != 0 {
            return Err(Errno::EINVAL);
        }
        match (o.option_id, o.op) {
            // RLIMIT_MODE (global) and HUGE_PAGES (per IOAS): accepted; a
            // get reads the default.
            (0 | 1, 0) => Ok(0),
            (0, 1) => {
                o.val64 = 0;
                user::write_struct(arg, &o, SIZE)?;
                Ok(0)
            }
            (1, 1) => {
                self.state.lock().unwrap().ioas(o.object_id)?;
                o.val64 = 1;
                user::write_struct(arg, &o, SIZE)?;
                Ok(0)
            }
            _ => Err(Errno::EOPNOTSUPP),
        }
    }

    fn vfio_ioas(&self, arg: usize) -> Result<i64, Errno> {
        const SIZE: usize = 12;
        let mut c: ifd::IommuVfioIoas = user::read_struct(arg, SIZE)?;
        if (c.size as usize) < SIZE || c.reserved != 0 {
            return Err(Errno::EINVAL);
        }
        let mut s = self.state.lock().unwrap();
        match c.op {
            0 => {
                s.compat_ioas();
                c.ioas_id = s.compat.unwrap_or(0);
                drop(s);
                user::write_struct(arg, &c, SIZE)?;
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
