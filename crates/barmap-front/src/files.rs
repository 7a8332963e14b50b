//! The objects behind the program's fds: a legacy container, a group, a
//! device (opened through a group or its cdev) and an iommufd.

use std::sync::{Arc, Mutex};

use barmap_vfio::uapi as v;

use crate::device::{self, EmuDevice};
use crate::dma::DmaTable;
use crate::iommufd::Iommufd;
use crate::{sriov, type1, user, Errno};

/// What an fd of the program is.
#[derive(Debug, Clone)]
pub enum File {
    /// `/dev/vfio/vfio`.
    Container(Arc<Container>),
    /// `/dev/vfio/N`.
    Group(Arc<Group>),
    /// A device fd.
    Device(Arc<DeviceFile>),
    /// `/dev/iommu`.
    Iommufd(Arc<Iommufd>),
    /// An SR-IOV PF's `sriov_numvfs`, open for writing (the fd is a
    /// memfd, see [`crate::Front::open_attr`]).
    NumVfs(Arc<crate::sriov::NumVfsAttr>),
}

/// A legacy VFIO container.
#[derive(Debug, Default)]
pub struct Container {
    state: Mutex<ContainerState>,
}

#[derive(Debug, Default)]
struct ContainerState {
    iommu: Option<u64>,
    groups: usize,
    dma: Arc<Mutex<DmaTable>>,
}

impl Container {
    /// Serves an ioctl on the container, as `vfio_fops_unl_ioctl` does:
    /// the version, extensions and `SET_IOMMU` itself, everything else
    /// passed to the IOMMU driver once one is set (before that, EINVAL).
    pub fn ioctl(&self, req: u64, arg: usize) -> Result<i64, Errno> {
        match req as libc::c_ulong {
            v::VFIO_GET_API_VERSION => Ok(i64::from(v::VFIO_API_VERSION)),
            v::VFIO_CHECK_EXTENSION => {
                let set = self.ready();
                Ok(i64::from(type1::has_extension(arg as u64, set)))
            }
            v::VFIO_SET_IOMMU => {
                let mut s = self.state.lock().unwrap();
                let t = arg as u64;
                // vfio_ioctl_set_iommu: no group, or a driver already set.
                if s.groups == 0 || s.iommu.is_some() {
                    return Err(Errno::EINVAL);
                }
                // The driver that claims the extension opens it: type1
                // claims VFIO_UNMAP_ALL too but cannot open it (EINVAL);
                // no driver claims anything else (ENODEV).
                if t == v::VFIO_UNMAP_ALL {
                    return Err(Errno::EINVAL);
                }
                if t != v::VFIO_TYPE1_IOMMU && t != v::VFIO_TYPE1V2_IOMMU {
                    return Err(Errno::ENODEV);
                }
                s.iommu = Some(t);
                Ok(0)
            }
            req => {
                let (iommu, dma) = {
                    let s = self.state.lock().unwrap();
                    (s.iommu, s.dma.clone())
                };
                // No driver yet: vfio_fops_unl_ioctl's default -EINVAL.
                let Some(t) = iommu else {
                    return Err(Errno::EINVAL);
                };
                match req {
                    v::VFIO_IOMMU_GET_INFO => type1::get_info(&dma, arg),
                    v::VFIO_IOMMU_MAP_DMA => type1::map_dma(&dma, arg, true),
                    v::VFIO_IOMMU_UNMAP_DMA => {
                        type1::unmap_dma(&dma, arg, t == v::VFIO_TYPE1V2_IOMMU)
                    }
                    // VFIO_IOMMU_DIRTY_PAGES (dirty tracking) is not
                    // emulated: ENOTTY, as for any other request.
                    _ => Err(Errno::ENOTTY),
                }
            }
        }
    }

    fn ready(&self) -> bool {
        self.state.lock().unwrap().iommu.is_some()
    }

    /// The IOMMU driver set (`VFIO_TYPE1_IOMMU` or `VFIO_TYPE1V2_IOMMU`).
    pub fn iommu(&self) -> Option<u64> {
        self.state.lock().unwrap().iommu
    }

    /// This process's side of a container that another process set up
    /// (its fd inherited or received, `iommu` as that process set it):
    /// ready for the groups attached to it there, with no DMA maps of this
    /// process's own (the other process's maps are at the device's server).
    pub fn adopted(iommu: Option<u64>) -> Container {
        let c = Container::default();
        c.state.lock().unwrap().iommu = iommu;
        c
    }
}

/// What a group is attached to.
#[derive(Debug, Clone)]
enum Attached {
    Legacy(Arc<Container>),
    /// Holds the iommufd, as the kernel's group holds a reference to its
    /// context until the unset.
    Iommufd(#[allow(dead_code)] Arc<Iommufd>),
}

/// An open group (one device per group).
///
/// Its lifetime is the kernel's: a device fd opened through the group holds
/// the group's open file (`vfio_group_use_container` takes a reference
/// to `group->opened_file`), so closing the group fd while a device fd is
/// open releases nothing. The group stays open (a new `open` of
/// `/dev/vfio/N` is EBUSY) and attached to its container (the DMA maps
/// stay) until the last of them is closed ([`Drop`]).
#[derive(Debug)]
pub struct Group {
    dev: Arc<EmuDevice>,
    container: Mutex<Option<Attached>>,
    /// Device fds opened through this group and still open
    /// (`container_users - 1` in the kernel).
    users: Mutex<usize>,
}

impl Group {
    /// The group of `dev`.
    pub fn new(dev: Arc<EmuDevice>) -> Group {
        Group {
            dev,
            container: Mutex::new(None),
            users: Mutex::new(0),
        }
    }

    /// This process's side of a group that another process opened (its fd
    /// inherited or received), attached to `container` if the group is
    /// attached to it there. The device's group-open bit is set here too.
    pub fn adopted(dev: Arc<EmuDevice>, container: Option<Arc<Container>>) -> Group {
        *dev.open.lock().unwrap() |= GROUP_OPEN;
        let attached = container.map(|k| {
            let mut s = k.state.lock().unwrap();
            s.groups += 1;
            dev.attach(Some(s.dma.clone()));
            drop(s);
            Attached::Legacy(k)
        });
        Group {
            dev,
            container: Mutex::new(attached),
            users: Mutex::new(0),
        }
    }

    /// The container the group is attached to, if a legacy one.
    pub fn container(&self) -> Option<Arc<Container>> {
        match &*self.container.lock().unwrap() {
            Some(Attached::Legacy(k)) => Some(k.clone()),
            _ => None,
        }
    }

    /// The group's device.
    pub fn device(&self) -> &Arc<EmuDevice> {
        &self.dev
    }

    /// Serves an ioctl on the group; `lookup` finds the file behind an fd
    /// (for SET_CONTAINER), `new_fd` gives a new fd to a device file.
    pub fn ioctl(
        self: &Arc<Self>,
        req: u64,
        arg: usize,
        lookup: &dyn Fn(i32) -> Option<File>,
        new_fd: &dyn Fn(File) -> Result<i32, Errno>,
    ) -> Result<i64, Errno> {
        match req as libc::c_ulong {
            v::VFIO_GROUP_GET_STATUS => self.get_status(arg),
            v::VFIO_GROUP_SET_CONTAINER => self.set_container(arg, lookup),
            v::VFIO_GROUP_UNSET_CONTAINER => self.unset_container(),
            v::VFIO_GROUP_GET_DEVICE_FD => Group::get_device_fd(self, arg, new_fd),
            _ => Err(Errno::ENOTTY),
        }
    }

    /// `vfio_group_ioctl_get_status`.
    fn get_status(&self, arg: usize) -> Result<i64, Errno> {
        let mut st: v::VfioGroupStatus = user::read_struct(arg, 8)?;
        if st.argsz < 8 {
            return Err(Errno::EINVAL);
        }
        st.flags = v::VFIO_GROUP_FLAGS_VIABLE;
        if self.container.lock().unwrap().is_some() {
            st.flags |= v::VFIO_GROUP_FLAGS_CONTAINER_SET;
        }
        user::write_struct(arg, &st, 8)?;
        Ok(0)
    }

    /// `vfio_group_ioctl_set_container`: EFAULT, then EBADF for a number
    /// that is no open fd, EINVAL if a container is set, EBADFD for an fd
    /// that is neither a container nor an iommufd.
    fn set_container(
        &self,
        arg: usize,
        lookup: &dyn Fn(i32) -> Option<File>,
    ) -> Result<i64, Errno> {
        let b = user::read(arg, 4)?;
        let fd = i32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
        let file = lookup(fd);
        if file.is_none() && !is_open_fd(fd) {
            return Err(Errno::EBADF);
        }
        let mut c = self.container.lock().unwrap();
        if c.is_some() {
            return Err(Errno::EINVAL);
        }
        let attached = match file {
            Some(File::Container(k)) => {
                let mut s = k.state.lock().unwrap();
                s.groups += 1;
                self.dev.attach(Some(s.dma.clone()));
                drop(s);
                Attached::Legacy(k)
            }
            Some(File::Iommufd(i)) => {
                self.dev
                    .attach(Some(i.shared(Some(fd), || i.compat_ioas())));
                Attached::Iommufd(i)
            }
            // "The FD passed is not recognized."
            _ => return Err(Errno(libc::EBADFD)),
        };
        *c = Some(attached);
        Ok(0)
    }

    /// `vfio_group_ioctl_unset_container`: EINVAL without a container,
    /// EBUSY while a device fd opened through the group is open.
    fn unset_container(&self) -> Result<i64, Errno> {
        let mut c = self.container.lock().unwrap();
        match &*c {
            None => Err(Errno::EINVAL),
            Some(Attached::Legacy(_)) if *self.users.lock().unwrap() > 0 => Err(Errno::EBUSY),
            Some(_) => {
                let users = *self.users.lock().unwrap();
                self.detach(c.take(), users == 0);
                Ok(0)
            }
        }
    }

    /// Detaches from a container (`vfio_group_detach_container`): the last
    /// group out takes the container's IOMMU driver and its DMA maps with
    /// it. An iommufd keeps serving a device that is still open (the
    /// device fd holds its own binding).
    fn detach(&self, attached: Option<Attached>, idle: bool) {
        match attached {
            Some(Attached::Legacy(k)) => {
                let mut s = k.state.lock().unwrap();
                s.groups -= 1;
                if s.groups == 0 {
                    s.iommu = None;
                    s.dma.lock().unwrap().clear();
                }
                self.dev.attach(None);
            }
            Some(Attached::Iommufd(_)) if idle => self.dev.attach(None),
            _ => {}
        }
    }

    /// `vfio_group_ioctl_get_device_fd`: the name first (EFAULT, EINVAL
    /// past a page, ENODEV for no such device), then the container
    /// (EINVAL without one, or for a legacy container without an IOMMU
    /// driver).
    fn get_device_fd(
        this: &Arc<Group>,
        arg: usize,
        new_fd: &dyn Fn(File) -> Result<i32, Errno>,
    ) -> Result<i64, Errno> {
        let name = read_cstr(arg, 4096)?;
        // vfio_pci_core_match: the name, its options, the VF token.
        let token = match sriov::match_name(&name, &this.dev.spec.bdf)? {
            None => return Err(Errno::ENODEV),
            Some(t) => t,
        };
        let vf_user = check_token(&this.dev, token.as_ref())?;
        let ready = match &*this.container.lock().unwrap() {
            Some(Attached::Legacy(k)) => k.ready(),
            // The compatibility IOAS exists from SET_CONTAINER on: the
            // device attaches to it (vfio_iommufd_compat_attach_ioas), no
            // SET_IOMMU needed.
            Some(Attached::Iommufd(_)) => true,
            None => false,
        };
        if !ready {
            return Err(Errno::EINVAL);
        }
        *this.users.lock().unwrap() += 1;
        let file = DeviceFile::open_in_group(this.dev.clone(), this.clone());
        *file.vf_user.lock().unwrap() = vf_user;
        new_fd(File::Device(Arc::new(file))).map(i64::from)
    }
}

/// `VFIO_DEVICE_BIND_FLAG_TOKEN`.
const BIND_FLAG_TOKEN: u32 = 1;

/// vfio-pci's `match_token_uuid` for opening `dev` with `token`: for a VF,
/// the hold that counts it among its PF's open VFs.
fn check_token(
    dev: &EmuDevice,
    token: Option<&sriov::Uuid>,
) -> Result<Option<sriov::VfUser>, Errno> {
    match dev.testbed.get() {
        Some(tb) => sriov::check_token(tb, &dev.spec, token),
        // No testbed (a device built outside a run): no SR-IOV.
        None if token.is_some() => Err(Errno::EINVAL),
        None => Ok(None),
    }
}

/// `vfio_ioctl_device_feature`, then vfio-pci's features: the size
/// (EFAULT, EINVAL), unknown flags, GET with SET without PROBE
/// (EINVAL); of vfio-pci's features only the VF token is emulated (the
/// others, and migration, which no model has, are ENOTTY).
fn feature(dev: &EmuDevice, arg: usize) -> Result<i64, Errno> {
    const MINSZ: u32 = 8;
    let b = user::read(arg, MINSZ as usize)?;
    let argsz = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
    let flags = u32::from_ne_bytes([b[4], b[5], b[6], b[7]]);
    if argsz < MINSZ {
        return Err(Errno::EINVAL);
    }
    let known = 0xffff | sriov::FEATURE_GET | sriov::FEATURE_SET | sriov::FEATURE_PROBE;
    if flags & !known != 0 {
        return Err(Errno::EINVAL);
    }
    let both = sriov::FEATURE_GET | sriov::FEATURE_SET;
    if flags & sriov::FEATURE_PROBE == 0 && flags & both == both {
        return Err(Errno::EINVAL);
    }
    let len = (argsz - MINSZ) as usize;
    match flags & 0xffff {
        sriov::FEATURE_PCI_VF_TOKEN => match dev.testbed.get() {
            Some(tb) => sriov::feature_token(tb, &dev.spec, flags, arg + 8, len),
            None => Err(Errno::ENOTTY),
        },
        _ => Err(Errno::ENOTTY),
    }
}

/// Whether `fd` is an open fd of this process.
fn is_open_fd(fd: i32) -> bool {
    // SAFETY: F_GETFD on any number: its flags, or -1 (EBADF).
    fd >= 0 && unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0
}

impl Drop for Group {
    /// `vfio_group_fops_release`: runs when the group fd is closed and the
    /// last device fd opened through it is closed too.
    fn drop(&mut self) {
        let attached = self.container.get_mut().unwrap().take();
        self.detach(attached, true);
        *self.dev.open.lock().unwrap() &= !GROUP_OPEN;
    }
}

/// The group-open bit of [`EmuDevice::open`].
pub const GROUP_OPEN: u32 = 1 << 31;

/// `strndup_user(addr, max)`: the string's bytes; EFAULT for memory that
/// cannot be read, EINVAL for no NUL within `max` bytes.
fn read_cstr(addr: usize, max: usize) -> Result<Vec<u8>, Errno> {
    let mut out = Vec::new();
    for i in 0..max {
        let b = user::read(addr + i, 1)?[0];
        if b == 0 {
            return Ok(out);
        }
        out.push(b);
    }
    Err(Errno::EINVAL)
}

/// An open device fd.
#[derive(Debug)]
pub struct DeviceFile {
    /// The device.
    pub dev: Arc<EmuDevice>,
    /// Opened as `/dev/vfio/devices/vfioN`: needs `BIND_IOMMUFD` first.
    cdev: bool,
    bound: Mutex<Option<(Arc<Iommufd>, u32)>>,
    /// The group this fd was opened through: kept open (and attached)
    /// until this fd is closed.
    group: Option<Arc<Group>>,
    /// For a VF opened with its PF's token: its count among the PF's open
    /// VFs, until this fd is closed.
    vf_user: Mutex<Option<sriov::VfUser>>,
}

impl DeviceFile {
    /// A new device fd of `dev`.
    pub fn open(dev: Arc<EmuDevice>, cdev: bool) -> DeviceFile {
        *dev.open.lock().unwrap() += 1;
        DeviceFile {
            dev,
            cdev,
            bound: Mutex::new(None),
            group: None,
            vf_user: Mutex::new(None),
        }
    }

    /// A new device fd of `dev`, opened through `group`.
    fn open_in_group(dev: Arc<EmuDevice>, group: Arc<Group>) -> DeviceFile {
        let mut file = DeviceFile::open(dev, false);
        file.group = Some(group);
        file
    }

    /// Whether the fd was opened as `/dev/vfio/devices/vfioN`.
    pub fn is_cdev(&self) -> bool {
        self.cdev
    }

    /// Serves an ioctl on the device fd.
    pub fn ioctl(
        &self,
        req: u64,
        arg: usize,
        lookup: &dyn Fn(i32) -> Option<File>,
    ) -> Result<i64, Errno> {
        let req = req as libc::c_ulong;
        if self.cdev {
            match req {
                v::VFIO_DEVICE_BIND_IOMMUFD => return self.bind(arg, lookup),
                v::VFIO_DEVICE_ATTACH_IOMMUFD_PT => return self.attach(arg),
                v::VFIO_DEVICE_DETACH_IOMMUFD_PT => return self.detach(arg),
                _ if self.bound.lock().unwrap().is_none() => return Err(Errno::EINVAL),
                _ => {}
            }
        }
        let dev = &self.dev;
        match req {
            v::VFIO_DEVICE_GET_INFO => device::get_info(arg),
            v::VFIO_DEVICE_GET_REGION_INFO => device::get_region_info(dev, arg),
            v::VFIO_DEVICE_GET_IRQ_INFO => device::get_irq_info(dev, arg),
            v::VFIO_DEVICE_SET_IRQS => dev.set_irqs(arg),
            v::VFIO_DEVICE_RESET => device::reset(dev),
            v::VFIO_DEVICE_FEATURE => feature(dev, arg),
            _ => Err(Errno::ENOTTY),
        }
    }

    /// `vfio_df_ioctl_bind_iommufd`: the size and flags (EINVAL; unknown
    /// non-zero bytes past the structure E2BIG), the group open
    /// (`vfio_device_block_group`: EBUSY), bound already (EINVAL),
    /// the VF token (`vfio_df_check_token`: EFAULT for an unreadable
    /// UUID, then vfio-pci's EACCES or EINVAL), then the iommufd (EBADF).
    fn bind(&self, arg: usize, lookup: &dyn Fn(i32) -> Option<File>) -> Result<i64, Errno> {
        const MINSZ: usize = 16;
        let size = user::read_u32(arg)?;
        let mut b: v::VfioDeviceBindIommufd = crate::iommufd::read_cmd(arg, size, MINSZ)?;
        if b.iommufd < 0 || b.flags & !BIND_FLAG_TOKEN != 0 {
            return Err(Errno::EINVAL);
        }
        // vfio_device_block_group: the device's group is open (here, or
        // for a served device in any process of its server).
        let group_open = *self.dev.open.lock().unwrap() & GROUP_OPEN != 0;
        if group_open || crate::Front::get().is_some_and(|f| f.group_held(&self.dev)) {
            return Err(Errno::EBUSY);
        }
        let mut bound = self.bound.lock().unwrap();
        if bound.is_some() {
            return Err(Errno::EINVAL);
        }
        let token = if b.flags & BIND_FLAG_TOKEN != 0 {
            let u = user::read(b.token_uuid_ptr as usize, 16)?;
            let mut t = [0u8; 16];
            t.copy_from_slice(&u);
            Some(t)
        } else {
            None
        };
        let vf_user = check_token(&self.dev, token.as_ref())?;
        let Some(File::Iommufd(i)) = lookup(b.iommufd) else {
            return Err(Errno::EBADF);
        };
        b.out_devid = i.shared(Some(b.iommufd), || i.bind(&self.dev));
        if let Err(e) = user::write(arg + 12, &b.out_devid.to_ne_bytes()) {
            i.shared(Some(b.iommufd), || i.unbind(b.out_devid));
            return Err(e);
        }
        *bound = Some((i, b.out_devid));
        *self.vf_user.lock().unwrap() = vf_user;
        Ok(0)
    }

    fn attach(&self, arg: usize) -> Result<i64, Errno> {
        const MINSZ: usize = 12;
        let a: v::VfioDeviceAttachIommufdPt = user::read_struct(arg, MINSZ)?;
        if (a.argsz as usize) < MINSZ || a.flags != 0 {
            return Err(Errno::EINVAL);
        }
        let bound = self.bound.lock().unwrap();
        let Some((i, devid)) = &*bound else {
            return Err(Errno::EINVAL);
        };
        // Attach, or replace an attachment; pt_id comes back as the HWPT.
        let (table, hwpt) = i.shared(None, || i.attach(*devid, a.pt_id))?;
        if let Err(e) = user::write(arg + 8, &hwpt.to_ne_bytes()) {
            i.shared(None, || i.detach(*devid));
            self.dev.attach(None);
            return Err(e);
        }
        self.dev.attach(Some(table));
        Ok(0)
    }

    fn detach(&self, arg: usize) -> Result<i64, Errno> {
        let argsz = user::read_u32(arg)?;
        if argsz < 8 {
            return Err(Errno::EINVAL);
        }
        let bound = self.bound.lock().unwrap();
        let Some((i, devid)) = &*bound else {
            return Err(Errno::EINVAL);
        };
        i.shared(None, || i.detach(*devid));
        self.dev.attach(None);
        Ok(0)
    }
}

impl Drop for DeviceFile {
    fn drop(&mut self) {
        if let Some((i, devid)) = self.bound.get_mut().unwrap().take() {
            i.shared(None, || i.unbind(devid));
            self.dev.attach(None);
        }
        let mut open = self.dev.open.lock().unwrap();
        *open -= 1;
        if *open & !GROUP_OPEN == 0 {
            // The last device fd: vfio-pci disables interrupts on release.
            self.dev.irqs.lock().unwrap().clear();
            if let Some(r) = self.dev.remote() {
                // A device shared across processes is released when its
                // last fd in any process closes.
                let last = crate::Front::get().is_none_or(|f| f.released_everywhere(&self.dev));
                if last {
                    r.release_irqs();
                }
            }
        }
        drop(open);
        if let Some(g) = &self.group {
            *g.users.lock().unwrap() -= 1;
        }
        // The group's reference goes with the fields, after this: the last
        // device fd of a closed group releases the group.
    }
}
